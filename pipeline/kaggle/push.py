"""`cellpipe push`: `cellpipe kernels`' folders to Kaggle, then the code submission.

With the real kaggle client, as the CLI would do it: with `kernels.weights_as=model`, the weights
as a Kaggle Model instance (`kaggle models create` when the model is new, then `models instances
create`, or `models instances versions create` when the instance exists), its new version
written into the kernels' `model_sources`; `kaggle datasets create` (or `version` when the
dataset exists) with sub-folders zipped, waiting until Kaggle has processed that very version
(not a previous one's "ready"); `kaggle kernels push` of the inference notebook (and of the
training one with `kernels.push_train`); then, with `kernels.submit`, waiting for that notebook
version's run and `kaggle competitions submit -k OWNER/SLUG -v VERSION -m "MESSAGE [LEDGER
KEY]"`. The owner is `kernels.owner` or the account of the Kaggle config; the metadata is
rewritten for it before anything is sent. Without credentials, offline, or when Kaggle refuses,
it stops with one line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pipeline.config import Config
from pipeline.core.errors import CellpipeError
from pipeline.kaggle.client import kaggle_api, kaggle_call
from pipeline.kaggle.credentials import refuse_credentials
from pipeline.kaggle.metadata import (
    kernel_folders,
    kernel_metadata,
    model_id,
    model_instance,
    slug,
    write_metadata,
    write_model_metadata,
)

DATASET_READY, DATASET_FAILED = "ready", ("failed", "deleted")
KERNEL_DONE, KERNEL_FAILED = "complete", ("error", "cancel_requested", "cancel_acknowledged")
SUBMISSION_FILE = "submission.csv"  # what the inference notebook writes to /kaggle/working/


def _refused(what: str, response: Any) -> None:
    """A one-line error when Kaggle's answer says no, or that it left a source out."""
    error = getattr(response, "error", None)
    if error:
        raise CellpipeError(f"{what}: Kaggle refused: {error}")
    for kind in ("dataset", "competition", "kernel"):
        left_out = getattr(response, f"invalid_{kind}_sources", None)
        if left_out:
            raise CellpipeError(f"{what}: Kaggle did not attach the {kind} {', '.join(left_out)}")


def wait_for(
    what: str,
    status: Callable[[], tuple[str, str]],
    done: str,
    failed: tuple[str, ...],
    cfg: Config,
) -> None:
    """Poll `status()`, a (state, detail) pair, until the state is `done`; a one-line error when
    it fails or takes longer than `kernels.wait_minutes`."""
    params = cfg.kernels
    deadline = time.monotonic() + params.wait_minutes * 60
    while True:
        now, detail = status()
        if now == done:
            return
        if now in failed:
            raise CellpipeError(f"{what}: {now}" + (f" ({detail})" if detail else ""))
        if time.monotonic() > deadline:
            raise CellpipeError(
                f"{what}: still {now} after {params.wait_minutes:g} minutes "
                "(kernels.wait_minutes); rerun `cellpipe push` later"
            )
        print(f"push: {what}: {now}, checking again in {params.poll_seconds:g} s")
        time.sleep(params.poll_seconds)


def kernel_state(api: Any, kernel: str, version: int) -> tuple[str, str]:
    """The state of that version's run (not the latest one's, which may be another push's), and
    Kaggle's message when it failed."""
    session = api.kernels_status(f"{kernel}/{version}")
    return session.status.name.lower(), session.failure_message or ""


def submission_description(cfg: Config) -> str:
    """`kernels.message`, with the ledger key of this run's latest out-of-fold score in
    brackets, so that `cellpipe leaderboard --refresh` finds the entry the submission belongs to."""
    from pipeline.core.ledger import read_ledger

    oof = str(cfg.layout.postprocessed("oof"))
    entries = read_ledger(cfg.score.ledger) if cfg.score.ledger.is_file() else []
    keys = [e["key"] for e in entries if e.get("submission") == oof]
    return f"{cfg.kernels.message} [{keys[-1]}]" if keys else cfg.kernels.message


def exists(get: Callable[[], Any]) -> bool:
    """Whether Kaggle has what `get()` asks for (False on HTTP 404)."""
    import requests

    try:
        get()
    except requests.exceptions.HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return False
        raise
    return True


def dataset_version(api: Any, dataset: str) -> int:
    """The dataset's current version number (0 before its first one is processed), asked of
    the client's own SDK (`dataset_status(format="json")` reports it only in newer clients)."""
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest

    owner, name = dataset.split("/")
    request = ApiGetDatasetRequest()
    request.owner_slug, request.dataset_slug = owner, name
    with api.build_kaggle_client() as kaggle:
        return int(
            kaggle.datasets.dataset_api_client.get_dataset(request).current_version_number or 0
        )


def dataset_state(api: Any, dataset: str, previous: int) -> tuple[str, str]:
    """ "ready" once the version after `previous` is processed; a "ready" that still belongs to
    `previous` reads as waiting for the new one."""
    now = api.dataset_status(dataset)
    if now != DATASET_READY:
        return now, ""
    version = dataset_version(api, dataset)
    return (now, "") if version > previous else (f"version {previous + 1} not ready", "")


def push_weights(api: Any, cfg: Config, owner: str) -> int:
    """Upload kernels/weights as a new version of the Kaggle Model instance (creating the model
    and the instance when new); the version number Kaggle gave it."""
    params, folder = cfg.kernels, str(cfg.layout.kernels_weights)
    model, instance = model_id(cfg, owner), model_instance(cfg, owner)
    write_model_metadata(cfg, owner, cfg.layout.kernels_weights)
    with kaggle_call(f"Kaggle Model {model}"):
        if not exists(lambda: api.model_get(model)):
            _refused(f"Kaggle Model {model}", api.model_create_new(folder))
            print(f"push: created Kaggle Model {model}")
        if exists(lambda: api.model_instance_get(instance)):
            response = api.model_instance_version_create(
                instance, folder, params.message, quiet=True, dir_mode="zip"
            )
        else:
            response = api.model_instance_create(folder, quiet=True, dir_mode="zip")
        _refused(f"Kaggle Model instance {instance}", response)
        version = int(api.model_instance_get(instance).version_number)
    print(f"push: weights are {instance}/{version}")
    return version


def push(cfg: Config) -> None:
    """Upload the bundle and the kernels; submit the inference kernel's new version."""
    layout, params = cfg.layout, cfg.kernels
    folders = {"bundle": layout.kernels_bundle, **kernel_folders(cfg)}
    for folder in folders.values():
        if not folder.is_dir():
            raise CellpipeError(f"missing {folder} (run `cellpipe kernels` first)")
    refuse_credentials(layout.kernels_dir)
    manifest = json.loads(layout.kernels_manifest.read_text())
    with kaggle_call("Kaggle login"):  # an access token is checked online
        api = kaggle_api()
    owner = params.owner or api.get_config_value("username")
    as_model = manifest.get("weights", {}).get("as") == "model"
    if as_model and not layout.kernels_weights.is_dir():
        raise CellpipeError(f"missing {layout.kernels_weights} (run `cellpipe kernels --force`)")
    version = push_weights(api, cfg, owner) if as_model else None
    write_metadata(cfg, owner, layout.kernels_bundle, kernel_folders(cfg), version)
    dataset = f"{owner}/{slug(params.dataset_title)}"
    bundle = str(layout.kernels_bundle)

    with kaggle_call(f"dataset {dataset}"):
        if exists(lambda: api.dataset_status(dataset)):
            previous = dataset_version(api, dataset)
            response = api.dataset_create_version(
                bundle, params.message, quiet=True, dir_mode="zip"
            )
            action = "new version of"
        else:
            previous = 0
            response = api.dataset_create_new(
                bundle, public=params.public, quiet=True, dir_mode="zip"
            )
            action = "created"
        _refused(f"dataset {dataset}", response)
        print(f"push: {action} dataset {dataset}")
        wait_for(
            f"dataset {dataset}",
            lambda: dataset_state(api, dataset, previous),
            DATASET_READY,
            DATASET_FAILED,
            cfg,
        )

    pushed = {}
    kinds = [k for k in kernel_folders(cfg) if k == "inference" or params.push_train]
    kinds = kinds or ["train"]  # a training bundle (kernels.inference=false): its kernel
    for kind in kinds:
        kernel = kernel_metadata(cfg, owner, kind)["id"]
        with kaggle_call(f"kernel {kernel}"):
            response = api.kernels_push(str(folders[kind]))
        _refused(f"kernel {kernel}", response)
        pushed[kind] = (kernel, response.version_number)
        print(f"push: kernel {kernel} version {response.version_number}: {response.url}")

    if not params.submit or "inference" not in pushed:
        return
    kernel, version = pushed["inference"]
    with kaggle_call(f"kernel {kernel}"):
        wait_for(
            f"kernel {kernel} version {version}",
            lambda: kernel_state(api, kernel, version),
            KERNEL_DONE,
            KERNEL_FAILED,
            cfg,
        )
    with kaggle_call(f"submission to {cfg.prepare.competition}"):
        response = api.competition_submit_code(
            SUBMISSION_FILE,
            submission_description(cfg),
            competition=cfg.prepare.competition,
            kernel=kernel,
            kernel_version=version,
            quiet=True,
        )
    print(
        f"push: submitted {kernel} version {version} to {cfg.prepare.competition}: "
        f"{response.message or 'ok'}"
    )
