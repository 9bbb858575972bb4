"""Kaggle: the client, the offline bundle and its notebooks, pushing, and in-kernel helpers.

- `client`: the real kaggle client, authenticated, failures as one-line errors.
- `metadata`: dataset and kernel metadata (slugs, checks as the client makes them).
- `credentials`: refuses anything that looks like a credential before it is uploaded.
- `wheels`: cellpipe's wheel from this checkout, and wheels the Kaggle image lacks.
- `notebooks`: kernel notebooks from the percent-format templates in `kernels/`.
- `bundle`: the bundle dataset and the notebooks under `work/kernels/` (`cellpipe kernels`).
- `push`: uploading and submitting (`cellpipe push`).
- `runtime`: what the notebooks call on Kaggle once cellpipe is installed.
"""
