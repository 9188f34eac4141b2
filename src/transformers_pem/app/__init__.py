"""The applications a user runs on images: `pem predict` over files, folders, globs and videos (`files`), and the
Gradio web app of a checkpoint (`web`: `pem app`, app.py on a Space).
"""
