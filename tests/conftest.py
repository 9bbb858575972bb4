"""Test-session setup: the kaggle client never sees a real account or the real endpoint.

The client fixes its endpoint when first imported (KaggleApi.args), so the loopback endpoint is
chosen here, before any test imports it; tests that talk to the stub then only set HTTP_PROXY.
"""

import os
import tempfile

os.environ["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
os.environ["KAGGLE_CONFIG_DIR"] = tempfile.mkdtemp(prefix="kaggle-config-")
for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
    os.environ.pop(name, None)
