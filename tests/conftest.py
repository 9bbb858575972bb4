"""Test-session setup: the kaggle client never sees a real account or the real endpoint, and a
`cellpipe` command that fails unexpectedly shows its traceback (CELLPIPE_DEBUG=1).

The client fixes its endpoint when first imported (KaggleApi.args), so the loopback endpoint is
chosen here, before any test imports it; tests that talk to the stub then only set HTTP_PROXY.
"""

import os
import tempfile

os.environ["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
os.environ["KAGGLE_CONFIG_DIR"] = tempfile.mkdtemp(prefix="kaggle-config-")
for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
    os.environ.pop(name, None)
os.environ["CELLPIPE_DEBUG"] = "1"  # tests of the plain report unset it
