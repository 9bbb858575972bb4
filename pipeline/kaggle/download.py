"""A competition's files downloaded by the kaggle client into a partial folder beside the data
folder (the client resumes an interrupted download), unzipped there and renamed into place."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from tqdm import tqdm

from pipeline.core.errors import CellpipeError
from pipeline.kaggle.client import kaggle_api, kaggle_call


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
