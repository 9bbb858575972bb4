"""Stage `prepare`: the competition data folder, generated (synthetic) or downloaded from Kaggle.

`prepare.source=synthetic` writes the embedded synthetic dataset in the competition's layout.
`prepare.source=kaggle` runs the real Kaggle client (`kaggle competitions download -c ...`) into a
partial folder beside the data folder (the client resumes an interrupted download), unzips it there
and renames it into place.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zipfile
from pathlib import Path

from tqdm import tqdm

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.core.fileio import atomic_dir
from pipeline.core.synthetic import MARKER_FILE, write_dataset
from pipeline.kaggle.client import kaggle_api, kaggle_call
from pipeline.runner import run_stage


def write_synthetic(cfg: Config) -> None:
    """Generate the synthetic competition folder at `cfg.data`, atomically."""
    data = cfg.data
    if data.exists() and any(data.iterdir()) and not (data / MARKER_FILE).exists():
        raise CellpipeError(
            f"{data} holds data cellpipe did not generate: not overwriting it "
            "(choose another data_dir, or prepare.source=kaggle to download there)"
        )
    with atomic_dir(data) as tmp:
        write_dataset(tmp, cfg.prepare.synthetic)
        # the marker: prepare may replace only folders it generated
        (tmp / MARKER_FILE).write_text(json.dumps(cfg.prepare.synthetic.model_dump(), indent=1))
    print(f"prepare: synthetic competition data -> {data}")


def download_competition(competition: str, data: Path) -> None:
    """Download and unzip a competition's files into `data`, through a resumable partial folder."""
    if data.exists() and any(data.iterdir()):
        raise CellpipeError(f"{data} is not empty but has no train.csv: not downloading into it")
    partial = data.parent / f".{data.name}.download"  # kept on failure: the client resumes
    partial.mkdir(parents=True, exist_ok=True)
    rules = f"accept the rules at https://www.kaggle.com/competitions/{competition}/rules"
    api = kaggle_api()
    with kaggle_call(f"download {competition}", refused_hint=rules):
        api.competition_download_files(competition, path=str(partial), quiet=False)
    archive = partial / f"{competition}.zip"
    if not archive.is_file():
        raise CellpipeError(f"the Kaggle client wrote no {archive.name} in {partial}")
    extracted = partial / "extracted"
    shutil.rmtree(extracted, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in tqdm(zf.infolist(), desc="unzip", unit="file"):
                zf.extract(member, extracted)
    except zipfile.BadZipFile as e:
        archive.unlink()  # a broken download: the next run fetches it again
        raise CellpipeError(
            f"{archive} is not a valid zip ({e}; deleted; run prepare again)"
        ) from e
    if not (extracted / "train.csv").is_file():
        raise CellpipeError(f"the downloaded archive has no train.csv ({archive})")
    if data.exists():
        data.rmdir()  # empty, checked above
    os.replace(extracted, data)
    shutil.rmtree(partial)
    print(f"prepare: {competition} -> {data}")


def main(cfg: Config, args: argparse.Namespace) -> None:
    params = cfg.prepare
    if params.source == "synthetic":
        body = lambda: write_synthetic(cfg)  # noqa: E731
    else:
        body = lambda: download_competition(params.competition, cfg.data)  # noqa: E731
    run_stage(
        "prepare",
        cfg,
        inputs=[],
        outputs=[cfg.layout.train_csv],
        params=params,
        body=body,
        force=args.force,
    )
