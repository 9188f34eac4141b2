"""The Gradio web app of a checkpoint (`pem app`, app.py on a Space)."""
