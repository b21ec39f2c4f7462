"""``scenecls serve``: a trained model behind HTTP, with dynamic batching and the limits a public
endpoint needs. It needs the ``serve`` extra (FastAPI, uvicorn, python-multipart); importing this package
imports none of them, nor TensorFlow."""
