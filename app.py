"""The PEM web app, as a Hugging Face Space runs it (`python app.py`): the checkpoint is `PEM_MODEL`, a local
directory or a Hub model id (downloaded with huggingface_hub). The same app as `pem app --model DIR`."""

import os

from huggingface_hub import snapshot_download

from transformers_pem.app.web import MAX_UPLOAD, build_app

model = os.environ.get("PEM_MODEL", "pem-checkpoint")
if not os.path.isdir(model):
    model = snapshot_download(model)
build_app(model).launch(max_file_size=MAX_UPLOAD, show_error=True)
