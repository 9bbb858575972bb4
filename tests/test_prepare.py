"""`cellpipe prepare`: the synthetic dataset, and the real Kaggle client against a loopback stub."""

import io
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from doc_commands import bash_block
from kaggle_stub import KaggleStub, client_env, json_reply, redirect

from pipeline.cli import main

COMPETITION = "sartorius-cell-instance-segmentation"
DOWNLOAD = "competitions.CompetitionApiService/DownloadDataFiles"
SMALL = [
    "prepare.synthetic.train_images_per_type=1",
    "prepare.synthetic.samples_per_type=1",
    "prepare.synthetic.semi_supervised_images=1",
    "prepare.synthetic.livecell_train_images=1",
    "prepare.synthetic.livecell_val_images=1",
    "prepare.synthetic.livecell_test_images=1",
    "prepare.synthetic.height=64",
    "prepare.synthetic.width=96",
]


def competition_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("train.csv", "id,annotation,width,height,cell_type\nabc,1 3,4,3,astro\n")
        zf.writestr("sample_submission.csv", "id,predicted\nt1,\n")
        zf.writestr("test/t1.png", b"")
    return buffer.getvalue()


def run(tmp_path, *overrides):
    return main(
        [
            "prepare",
            f"work_dir={tmp_path / 'w'}",
            f"data_dir={tmp_path / 'data'}",
            "prepare.source=kaggle",
            *overrides,
        ]
    )


def one_line(capsys, text):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err, err


def test_download_through_the_real_client(tmp_path, monkeypatch):
    with KaggleStub() as stub:
        stub.handlers[DOWNLOAD] = lambda request: redirect(
            f"http://localhost/files/{COMPETITION}.zip"
        )
        stub.files[f"/files/{COMPETITION}.zip"] = competition_zip()
        client_env(monkeypatch, stub, tmp_path / "cfg")
        assert run(tmp_path) == 0
    [call] = stub.calls(DOWNLOAD)
    assert call.method == "POST"
    assert call.json()["competitionName"] == COMPETITION
    assert call.headers["Authorization"].startswith("Basic ")
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    assert train["id"].tolist() == ["abc"]
    assert (tmp_path / "data" / "test" / "t1.png").exists()
    assert not (tmp_path / ".data.download").exists()  # the partial folder is gone


def test_no_credentials_is_one_line_and_offline(tmp_path, monkeypatch, capsys):
    with KaggleStub() as stub:
        client_env(monkeypatch, stub, tmp_path / "cfg", credentials=False)
        assert run(tmp_path) == 2
    one_line(capsys, "no Kaggle credentials")
    assert stub.requests == []


def test_unreachable_kaggle_is_one_line(tmp_path, monkeypatch, capsys):
    client_env(monkeypatch, None, tmp_path / "cfg")
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HTTP_PROXY", closed)
    monkeypatch.setenv("http_proxy", closed)
    assert run(tmp_path) == 2
    one_line(capsys, "cannot reach Kaggle")


@pytest.mark.parametrize(
    ("status", "text"), [(403, "accept the rules"), (404, "Kaggle answered HTTP 404")]
)
def test_refusals_are_one_line(tmp_path, monkeypatch, capsys, status, text):
    with KaggleStub() as stub:
        stub.handlers[DOWNLOAD] = lambda request: json_reply({"message": "no"}, status)
        client_env(monkeypatch, stub, tmp_path / "cfg")
        assert run(tmp_path) == 2
    one_line(capsys, text)


def test_synthetic_is_written_once_and_never_over_real_data(tmp_path, capsys):
    args = ["prepare", f"work_dir={tmp_path / 'w'}", *SMALL]
    assert main(args) == 0
    data = tmp_path / "w" / "data"
    assert {p.name for p in data.iterdir()} >= {
        "train",
        "test",
        "train.csv",
        "sample_submission.csv",
        "train_semi_supervised",
        "LIVECell_dataset_2021",
    }
    capsys.readouterr()
    assert main(args) == 0
    assert "prepare: up to date" in capsys.readouterr().out
    before = (data / "train.csv").read_bytes()
    assert main([*args, "prepare.synthetic.seed=1"]) == 0  # a config change regenerates it
    assert "up to date" not in capsys.readouterr().out
    assert (data / "train.csv").read_bytes() != before
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "mine.txt").write_text("precious")
    assert main([*args, f"data_dir={tmp_path / 'real'}"]) == 2
    one_line(capsys, "did not generate: not overwriting it")
    assert (tmp_path / "real" / "mine.txt").read_text() == "precious"


def test_readme_download_commands_run_as_written(tmp_path, monkeypatch):
    """README's first Kaggle block with /data/sartorius in a temporary folder: the `kaggle` CLI
    download and the unzip as written (against the stub), then each `make` line planned
    (`make -n`: the GPU config trains for hours on a CPU) on the downloaded folder."""
    root = Path(__file__).resolve().parents[1]
    block = bash_block("README.md", "kaggle competitions download")
    data = tmp_path / "data" / "sartorius"
    lines = [
        line.split("  #")[0].replace("/data/sartorius", str(data)) for line in block.splitlines()
    ]
    commands = [line for line in lines if line.strip() and not line.startswith("#")]
    assert [c.split()[0] for c in commands] == ["kaggle", "unzip", "make", "make", "make"]
    with KaggleStub() as stub:
        stub.handlers[DOWNLOAD] = lambda request: redirect(
            f"http://localhost/files/{COMPETITION}.zip"
        )
        stub.files[f"/files/{COMPETITION}.zip"] = competition_zip()
        client_env(monkeypatch, stub, tmp_path / "cfg")
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        for command in commands[:2]:
            subprocess.run(["bash", "-euc", command], cwd=tmp_path, check=True)
    assert (data / "train.csv").is_file() and (data / "test" / "t1.png").is_file()
    work = tmp_path / "work"
    for command in commands[2:]:
        planned = subprocess.run(
            ["bash", "-euc", command.replace("make ", f"make -n WORK={work} ", 1)],
            cwd=root,
            capture_output=True,
            text=True,
        )
        assert planned.returncode == 0, planned.stderr
        assert f"data_dir={data}" in planned.stdout and "configs/kaggle_gpu.yaml" in planned.stdout
    assert not work.exists()
