"""`cellpipe push`: the real kaggle client against a loopback stub of the Kaggle API."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from doc_commands import bash_block
from kaggle_stub import KaggleStub, client_env, json_reply

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.core.fileio import write_json

COMPETITION = "sartorius-cell-instance-segmentation"
STATUS = "datasets.DatasetApiService/GetDatasetStatus"
CREATE = "datasets.DatasetApiService/CreateDataset"
VERSION = "datasets.DatasetApiService/CreateDatasetVersion"
UPLOAD = "blobs.BlobApiService/StartBlobUpload"
SAVE = "kernels.KernelsApiService/SaveKernel"
SESSION = "kernels.KernelsApiService/GetKernelSessionStatus"
SUBMIT = "competitions.CompetitionApiService/CreateCodeSubmission"
GET_DATASET = "datasets.DatasetApiService/GetDataset"
GET_MODEL = "models.ModelApiService/GetModel"
CREATE_MODEL = "models.ModelApiService/CreateModel"
GET_INSTANCE = "models.ModelApiService/GetModelInstance"
CREATE_INSTANCE = "models.ModelApiService/CreateModelInstance"
INSTANCE_VERSION = "models.ModelApiService/CreateModelInstanceVersion"
ROOT = Path(__file__).resolve().parents[1]


def kernel_inputs(work: Path) -> list[str]:
    """What `cellpipe kernels` reads (one fold model, thresholds), under `work`; its settings."""
    (work / "finetune" / "maskrcnn" / "fold0").mkdir(parents=True)
    (work / "finetune" / "maskrcnn" / "fold0" / "model_best.pth").write_bytes(b"weights")  # copied
    write_json(work / "thresholds.json", {"thresholds": {}})
    return [f"work_dir={work}", "finetune.folds=[0]", "kernels.include_pretrained=false"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`cellpipe kernels` output, built without a Kaggle username (ids say a placeholder)."""
    root = tmp_path_factory.mktemp("push")
    work = root / "work"
    settings = kernel_inputs(work)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KAGGLE_USERNAME", raising=False)
        mp.setenv("KAGGLE_CONFIG_DIR", str(root / "no-config"))
        assert main(["kernels", *settings]) == 0
    meta = json.loads((work / "kernels" / "inference" / "kernel-metadata.json").read_text())
    assert meta["id"] == "your-kaggle-username/cellpipe-inference"
    return work


@pytest.fixture
def work(built, tmp_path, monkeypatch):
    """A copy of the built folders per test (push rewrites their metadata)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the client's upload bookkeeping
    copy = tmp_path / "work"
    shutil.copytree(built / "kernels", copy / "kernels")
    return copy


def push_args(work, *overrides) -> list[str]:
    settings = [f"work_dir={work}", "kernels.poll_seconds=0", "kernels.wait_minutes=0.05"]
    settings += ["kernels.include_pretrained=false"]
    return ["push", *settings, *overrides]


def push(work, *overrides):
    return main(push_args(work, *overrides))


def kaggle(
    stub, dataset_exists=False, session=("RUNNING", "COMPLETE"), stale=1, model_exists=False
):
    """Answers of a Kaggle that accepts everything. The dataset (at version 3 when it exists)
    shows its new version after `stale` more polls, saying READY meanwhile when it had a ready
    version before; the notebook run goes through `session`; the Kaggle Model instance (at
    version 4 when it exists) gets a version per upload."""
    state = {"dataset": 3 if dataset_exists else 0, "exists": dataset_exists, "lag": 0}
    state.update(model=4 if model_exists else 0, model_exists=model_exists, next=0)
    sessions = iter(session)

    def dataset_status(request):  # each poll moves processing on
        if not state["exists"]:
            return json_reply({"error": "no"}, 404)
        if state["lag"]:
            state["lag"] -= 1
        elif state["next"]:
            state["dataset"], state["next"] = state["next"], 0
        return json_reply({"status": "READY" if state["dataset"] else "BLOBS_RECEIVED"})

    def get_dataset(request):
        return json_reply({"currentVersionNumber": state["dataset"]})

    def new_dataset_version(request):
        state.update(exists=True, next=state["dataset"] + 1, lag=stale)
        return json_reply({"ref": "tester/cellpipe-bundle", "status": "ok"})

    def upload(request):
        name = request.json()["name"]
        return json_reply({"token": f"token-{name}", "createUrl": f"http://localhost/up/{name}"})

    def kernel_status(request):
        status = next(sessions)
        return json_reply({"status": status, "failureMessage": "out of memory"})

    def get_model(request):
        return json_reply({"id": 1}) if state["model_exists"] else json_reply({}, 404)

    def get_instance(request):
        found = {"id": 2, "slug": "default", "versionNumber": state["model"]}
        return json_reply(found) if state["model"] else json_reply({}, 404)

    def new_model_version(request):
        state["model"] += 1
        return json_reply({"id": 2, "ref": "tester/cellpipe-weights", "url": "https://kaggle/m"})

    stub.handlers.update(
        {
            STATUS: dataset_status,
            GET_DATASET: get_dataset,
            UPLOAD: upload,
            CREATE: new_dataset_version,
            VERSION: new_dataset_version,
            SAVE: lambda r: json_reply(
                {"ref": r.json()["slug"], "url": "https://kaggle/x", "versionNumber": 7}
            ),
            SESSION: kernel_status,
            SUBMIT: lambda r: json_reply({"message": "Submission successful", "ref": 1}),
            GET_MODEL: get_model,
            CREATE_MODEL: lambda r: (
                state.update(model_exists=True)
                or json_reply({"id": 1, "ref": "tester/cellpipe-weights"})
            ),
            GET_INSTANCE: get_instance,
            CREATE_INSTANCE: new_model_version,
            INSTANCE_VERSION: new_model_version,
        }
    )


def test_push_creates_the_dataset_pushes_the_kernel_and_submits(work, tmp_path, monkeypatch):
    with KaggleStub() as stub:
        kaggle(stub)
        client_env(monkeypatch, stub, tmp_path / "cfg")
        assert push(work, "kernels.message=first try") == 0

    # the owner comes from the Kaggle config: the metadata now says so
    meta = json.loads((work / "kernels" / "inference" / "kernel-metadata.json").read_text())
    assert meta["id"] == "tester/cellpipe-inference"
    auth = "Basic " + base64.b64encode(b"tester:0123456789abcdef").decode()
    assert all(r.headers.get("Authorization") == auth for r in stub.requests if r.rpc)

    [create] = stub.calls(CREATE)
    body = create.json()
    assert (body["ownerSlug"], body["slug"], body["title"]) == (
        "tester",
        "cellpipe-bundle",
        "cellpipe bundle",
    )
    assert body["licenseName"] == "CC0-1.0" and body["isPrivate"] is True
    uploaded = sorted(r.json()["name"] for r in stub.calls(UPLOAD))
    bundled = ["cellpipe-bundle.json", "config.yaml", "thresholds.json", "train.yaml", "wheels.zip"]
    weights = ["cellpipe-weights.json", "checkpoints.zip"]  # sub-folders go zipped
    assert uploaded == sorted(bundled + weights)
    assert sorted(f["token"] for f in body["files"]) == [f"token-{n}" for n in bundled]
    # the weights: a new Kaggle Model, its first instance, attached to the kernel at version 1
    [model] = stub.calls(CREATE_MODEL)
    assert (model.json()["ownerSlug"], model.json()["slug"]) == ("tester", "cellpipe-weights")
    [instance] = stub.calls(CREATE_INSTANCE)
    sent = instance.json()
    assert (sent["ownerSlug"], sent["modelSlug"]) == ("tester", "cellpipe-weights")
    assert sent["body"]["instanceSlug"] == "default"
    assert sorted(f["token"] for f in sent["body"]["files"]) == [f"token-{n}" for n in weights]
    with zipfile.ZipFile(io.BytesIO(stub.uploads["/up/checkpoints.zip"])) as zf:
        assert zf.read("maskrcnn-fold0-model_best.pth") == b"weights"
    with zipfile.ZipFile(io.BytesIO(stub.uploads["/up/wheels.zip"])) as zf:
        assert zf.namelist() == ["cellpipe-0.1.0-py3-none-any.whl"]
    assert (
        stub.uploads["/up/thresholds.json"]
        == (work / "kernels/bundle/thresholds.json").read_bytes()
    )
    assert not stub.calls(VERSION)

    [save] = stub.calls(SAVE)
    kernel = save.json()
    assert kernel["slug"] == "tester/cellpipe-inference"
    assert kernel["newTitle"] == "cellpipe inference"
    assert kernel["enableInternet"] is False and kernel["enableGpu"] is True
    assert kernel["datasetDataSources"] == ["tester/cellpipe-bundle"]
    assert kernel["modelDataSources"] == ["tester/cellpipe-weights/pyTorch/default/1"]
    assert kernel["competitionDataSources"] == [COMPETITION]
    assert (kernel["language"], kernel["kernelType"], kernel["isPrivate"]) == (
        "python",
        "notebook",
        True,
    )
    cells = json.loads(kernel["text"])["cells"]
    assert any("BUNDLE = 'cellpipe-bundle'" in c["source"] for c in cells)

    assert len(stub.calls(SESSION)) == 2  # polled until the version has run
    assert {r.json().get("versionLabel") for r in stub.calls(SESSION)} == {"v7"}  # that version
    [submit] = stub.calls(SUBMIT)
    sent = submit.json()
    assert sent["competitionName"] == COMPETITION
    assert (sent["kernelSlug"], sent["kernelVersion"]) == ("cellpipe-inference", 7)
    assert sent["fileName"] == "submission.csv"
    assert sent["submissionDescription"] == "first try"
    order = [r.rpc for r in stub.requests if r.rpc and r.rpc != UPLOAD]
    assert order.index(CREATE_INSTANCE) < order.index(CREATE) < order.index(SAVE)
    assert order.index(SAVE) < order.index(SUBMIT)


def test_the_submission_description_carries_the_ledger_key(work, tmp_path, monkeypatch):
    ledger = tmp_path / "leaderboard.jsonl"
    oof = str(work / "postprocess" / "oof.csv")
    entries = [{"key": "aaaa", "submission": oof}, {"key": "bbbb", "submission": "other.csv"}]
    entries.append({"key": "cccc", "submission": oof})  # the latest score of this run
    ledger.write_text("".join(json.dumps(e) + "\n" for e in entries))
    with KaggleStub() as stub:
        kaggle(stub)
        client_env(monkeypatch, stub, tmp_path / "cfg")
        assert push(work, "kernels.message=fold ensemble", f"score.ledger={ledger}") == 0
    [submit] = stub.calls(SUBMIT)
    assert submit.json()["submissionDescription"] == "fold ensemble [cccc]"


def test_an_existing_dataset_and_model_get_new_versions(work, tmp_path, monkeypatch, capsys):
    with KaggleStub() as stub:
        kaggle(stub, dataset_exists=True, stale=3, model_exists=True)
        client_env(monkeypatch, stub, tmp_path / "cfg")
        overrides = ["kernels.submit=false", "kernels.push_train=true", "kernels.owner=team"]
        assert push(work, *overrides, "kernels.message=v2") == 0
    assert not stub.calls(CREATE) and not stub.calls(CREATE_MODEL)
    assert not stub.calls(CREATE_INSTANCE)
    [model_version] = stub.calls(INSTANCE_VERSION)
    assert model_version.json()["body"]["versionNotes"] == "v2"
    assert all(r.json()["modelDataSources"] == ["team/cellpipe-weights/pyTorch/default/5"]
               for r in stub.calls(SAVE))  # fmt: skip
    [version] = stub.calls(VERSION)
    assert version.path.endswith(VERSION)
    assert version.json()["body"]["versionNotes"] == "v2"
    # Kaggle said READY for version 3 while version 4 was processed: kernels waited for 4
    waited = capsys.readouterr().out.count("version 4 not ready")
    assert waited == 3
    order = [r.rpc for r in stub.requests if r.rpc]
    last_check = max(k for k, rpc in enumerate(order) if rpc == GET_DATASET)
    assert order.index(SAVE) == last_check + 1  # kernels pushed once version 4 was ready
    slugs = [r.json()["slug"] for r in stub.calls(SAVE)]
    assert slugs == ["team/cellpipe-inference", "team/cellpipe-train"]
    assert all(r.json()["datasetDataSources"] == ["team/cellpipe-bundle"] for r in stub.calls(SAVE))
    assert not stub.calls(SESSION) and not stub.calls(SUBMIT)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_without_credentials_nothing_is_sent(work, tmp_path, monkeypatch, capsys):
    with KaggleStub() as stub:
        client_env(monkeypatch, stub, tmp_path / "cfg", credentials=False)
        assert push(work) == 2
    assert "no Kaggle credentials" in one_line_error(capsys)
    assert stub.requests == []


def test_offline_says_so(work, tmp_path, monkeypatch, capsys):
    client_env(monkeypatch, None, tmp_path / "cfg")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    assert push(work) == 2
    assert "cannot reach Kaggle (offline?): [Errno" in one_line_error(capsys)


def test_a_failed_run_is_not_submitted(work, tmp_path, monkeypatch, capsys):
    with KaggleStub() as stub:
        kaggle(stub, session=("RUNNING", "ERROR"))
        client_env(monkeypatch, stub, tmp_path / "cfg")
        assert push(work) == 2
    assert "tester/cellpipe-inference version 7: error (out of memory)" in one_line_error(capsys)
    assert not stub.calls(SUBMIT)


def test_refusals_and_http_errors_are_one_line(work, tmp_path, monkeypatch, capsys):
    with KaggleStub() as stub:
        kaggle(stub, dataset_exists=True)
        stub.handlers[SAVE] = lambda r: json_reply({"error": "Notebook is locked"})
        client_env(monkeypatch, stub, tmp_path / "cfg")
        assert push(work) == 2
        assert "Kaggle refused: Notebook is locked" in one_line_error(capsys)
        stub.handlers[SAVE] = lambda r: json_reply(
            {"versionNumber": 1, "invalidDatasetSources": ["tester/cellpipe-bundle"]}
        )
        assert push(work) == 2
        assert "did not attach the dataset tester/cellpipe-bundle" in one_line_error(capsys)
        stub.handlers[STATUS] = lambda r: json_reply({"error": "bad key"}, 401)
        assert push(work) == 2
        assert "Kaggle answered HTTP 401" in one_line_error(capsys)


def test_credentials_in_a_built_folder_stop_the_push(work, tmp_path, monkeypatch, capsys):
    (work / "kernels" / "bundle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    with KaggleStub() as stub:
        kaggle(stub)
        client_env(monkeypatch, stub, tmp_path / "cfg")
        assert push(work) == 2
    assert "refusing to upload credentials: bundle/kaggle.json" in one_line_error(capsys)
    assert stub.requests == []


def kaggle_json(folder: Path, content: bytes) -> Path:
    """The kaggle client's config file in `folder` (its KAGGLE_CONFIG_DIR)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kaggle.json").write_bytes(content)
    return folder / "kaggle.json"


def test_the_account_of_kaggle_json_builds_and_pushes(work, tmp_path, monkeypatch):
    """The client fixes where kaggle.json is when first imported: push runs in a new process."""
    with KaggleStub() as stub:
        kaggle(stub)
        client_env(monkeypatch, stub, tmp_path / "cfg", credentials=False)
        kaggle_json(tmp_path / "cfg", b'{"username": "filer", "key": "0123456789abcdef"}')
        settings = kernel_inputs(tmp_path / "fresh")
        assert main(["kernels", *settings]) == 0
        meta = tmp_path / "fresh" / "kernels" / "inference" / "kernel-metadata.json"
        assert json.loads(meta.read_text())["id"] == "filer/cellpipe-inference"
        monkeypatch.setenv("TMPDIR", str(tmp_path))  # the client's upload bookkeeping
        monkeypatch.setenv("PYTHONPATH", str(ROOT))
        command = [sys.executable, "-m", "pipeline", *push_args(work)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert stub.calls(SAVE)[0].json()["slug"] == "filer/cellpipe-inference"
    auth = "Basic " + base64.b64encode(b"filer:0123456789abcdef").decode()
    assert all(r.headers.get("Authorization") == auth for r in stub.requests if r.rpc)


# kaggle.json the client would silently drop (or crash on), and what the one line says of it
MALFORMED_KAGGLE_JSON = {
    "not JSON": (b'{"username": "filer", "key": ', "not valid JSON (Expecting value at line 1)"),
    "not UTF-8": (b'{"username": "f\xe9", "key": "k"}', "not valid JSON (not UTF-8 text at byte"),
    "not an object": (b'["filer", "0123456789abcdef"]', "an array, expected {"),
    "no key": (b'{"username": "filer"}', "no 'key', expected {"),
    "no username": (b'{"key": "0123456789abcdef"}', "no 'username', expected {"),
    "a number for the key": (b'{"username": "filer", "key": 987654321}', "'key' is a number"),
    "an empty username": (b'{"username": " ", "key": "0123456789abcdef"}', "'username' is empty"),
}


@pytest.mark.parametrize("kind", MALFORMED_KAGGLE_JSON)
def test_a_malformed_kaggle_json_is_one_line_naming_it(work, tmp_path, monkeypatch, capsys, kind):
    content, said = MALFORMED_KAGGLE_JSON[kind]
    with KaggleStub() as stub:
        kaggle(stub)
        client_env(monkeypatch, stub, tmp_path / "cfg", credentials=False)
        path = kaggle_json(tmp_path / "cfg", content)
        assert push(work) == 2
        err = one_line_error(capsys)
        assert err.startswith(f"cellpipe push: error: {path}: {said}"), err
        assert "987654321" not in err  # a key is never quoted
        assert stub.requests == []
        settings = kernel_inputs(tmp_path / "fresh")  # the bundle's owner would come from it
        assert main(["kernels", *settings]) == 2
        assert one_line_error(capsys).startswith(f"cellpipe kernels: error: {path}: {said}")
        assert not (tmp_path / "fresh" / "kernels").exists()


def test_the_environment_may_stand_in_for_a_field_of_kaggle_json(tmp_path, monkeypatch, capsys):
    """The client takes KAGGLE_KEY over kaggle.json's key, so a file without one is fine then."""
    client_env(monkeypatch, None, tmp_path / "cfg", credentials=False)
    kaggle_json(tmp_path / "cfg", b'{"username": "filer"}')
    settings = kernel_inputs(tmp_path / "fresh")
    assert main(["kernels", *settings]) == 2
    assert "no 'key'" in one_line_error(capsys)
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    assert main(["kernels", *settings]) == 0
    meta = tmp_path / "fresh" / "kernels" / "inference" / "kernel-metadata.json"
    assert json.loads(meta.read_text())["id"] == "filer/cellpipe-inference"


def test_push_needs_the_built_folders(work, tmp_path, monkeypatch, capsys):
    assert main(["push", f"work_dir={tmp_path / 'empty'}"]) == 2
    assert "run `cellpipe kernels` first" in one_line_error(capsys)
    shutil.rmtree(work / "kernels" / "weights")  # the manifest says the weights are a model
    with KaggleStub() as stub:
        kaggle(stub)
        client_env(monkeypatch, stub, tmp_path / "cfg")
        assert push(work) == 2
    assert "weights (run `cellpipe kernels --force`)" in one_line_error(capsys)
    assert not stub.calls(CREATE) and not stub.calls(CREATE_MODEL)


def test_a_fresh_checkout_builds_and_pushes_a_training_kernel(tmp_path, monkeypatch):
    """No fold models, no thresholds.json: `kernels.inference=false` bundles cellpipe and the
    training config, and push starts the training kernel without submitting anything."""
    work = tmp_path / "fresh"
    gpu = str(Path(__file__).parents[1] / "configs" / "kaggle_gpu.yaml")  # as docs/kaggle.md
    settings = ["-c", gpu, f"work_dir={work}", "kernels.inference=false"]
    settings += ["kernels.dataset_sources=[tester/torchvision-maskrcnn-coco]"]
    settings += ["kernels.model_sources=[tester/livecell/pyTorch/r50/1]"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-config"))
        mp.delenv("KAGGLE_USERNAME", raising=False)
        assert main(["kernels", *settings]) == 0
    kernels = work / "kernels"
    assert sorted(p.name for p in kernels.iterdir()) == ["bundle", "train"]
    manifest = json.loads((kernels / "bundle" / "cellpipe-bundle.json").read_text())
    assert manifest["checkpoints"] == [] and manifest["thresholds"] is None
    assert manifest["pretrained"] == {}  # nothing local: the kernel pretrains on Kaggle
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with KaggleStub() as stub:
        kaggle(stub)
        client_env(monkeypatch, stub, tmp_path / "cfg")
        push_settings = [*settings, "kernels.poll_seconds=0"]
        assert main(["push", *push_settings]) == 0
    [save] = stub.calls(SAVE)
    assert save.json()["slug"] == "tester/cellpipe-train"
    assert save.json()["datasetDataSources"] == [
        "tester/cellpipe-bundle",
        "tester/torchvision-maskrcnn-coco",
    ]
    assert save.json()["modelDataSources"] == ["tester/livecell/pyTorch/r50/1"]
    assert not stub.calls(SESSION) and not stub.calls(SUBMIT)


OUTPUT = "kernels.KernelsApiService/ListKernelSessionOutput"


@pytest.mark.parametrize("block", ["fresh checkout", "after a CPU run"])
def test_documented_training_on_kaggle_runs_as_written(block, tmp_path, monkeypatch):
    """docs/kaggle.md's two paths to a model trained on Kaggle, their commands as written (`<you>` =
    tester) in a fresh folder, the real kaggle client and CLI against the stub: build and push
    the training kernel (from a fresh checkout, or beside a CPU run's inference kernel), fetch
    its output with `kaggle kernels output`, bundle those models, submit."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    if block == "after a CPU run":  # what `make stages` leaves that `kernels` reads
        cpu = load_config(ROOT / "configs" / "cpu.yaml", [f"work_dir={tmp_path / 'work'}"])
        for path in [p for paths in cpu.fold_models().values() for p in paths]:
            path.parent.mkdir(parents=True)
            path.write_bytes(b"cpu model")
        write_json(cpu.layout.thresholds, {"thresholds": {}})
    output = {  # what the training kernel leaves in /kaggle/working (tests/test_kernels.py)
        "cellpipe/thresholds.json": json.dumps({"thresholds": {}}).encode(),
        "cellpipe/config.yaml": b"model: {family: maskrcnn}\n",
        "cellpipe/finetune/summary.json": b"{}",
        **{f"cellpipe/finetune/maskrcnn/fold{k}/model_best.pth": b"fold %d" % k for k in range(5)},
    }
    with KaggleStub() as stub:
        kaggle(stub, session=("COMPLETE",))
        for name, body in output.items():
            stub.files[f"/out/{name}"] = body
        files = [{"fileName": n, "url": f"http://localhost/out/{n}"} for n in output]
        stub.handlers[OUTPUT] = lambda r: json_reply({"files": files, "log": ""})
        client_env(monkeypatch, stub, tmp_path / "cfg")
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        marker = "kernels.inference=false" if block == "fresh checkout" else "train_config="
        commands = bash_block("docs/kaggle.md", marker).replace("<you>", "tester")
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", commands],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    saves = [r.json() for r in stub.calls(SAVE)]
    assert [s["slug"] for s in saves][-1] == "tester/cellpipe-inference"
    [train] = [s for s in saves if s["slug"] == "tester/cellpipe-train"]
    if block == "fresh checkout":
        assert train["datasetDataSources"][1:] == ["tester/torchvision-maskrcnn-coco"]
        assert not train.get("modelDataSources")  # a fresh checkout has no weights to ship
    versions = len(stub.calls(CREATE_INSTANCE)) + len(stub.calls(INSTANCE_VERSION))
    assert saves[-1]["modelDataSources"] == [f"tester/cellpipe-weights/pyTorch/default/{versions}"]
    with zipfile.ZipFile(io.BytesIO(stub.uploads["/up/checkpoints.zip"])) as zf:  # the last
        assert sorted(zf.read(n) for n in zf.namelist()) == [b"fold %d" % k for k in range(5)]
    [submit] = stub.calls(SUBMIT)  # only once the Kaggle-trained models are bundled
    assert submit.json()["kernelSlug"] == "cellpipe-inference"
