"""Stage `convert`: competition data -> COCO JSON (train, test, LIVECell); also COCO -> CSV."""

from __future__ import annotations

import argparse

from pipeline.config import Config
from pipeline.core import coco
from pipeline.core.fileio import atomic_path, read_json, write_json
from pipeline.runner import run_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to-csv",
        nargs=2,
        metavar=("COCO_JSON", "CSV"),
        help="convert a COCO JSON back to a competition CSV instead",
    )


def main(cfg: Config, args: argparse.Namespace) -> None:
    layout, params = cfg.layout, cfg.convert
    if args.to_csv:
        source, target = args.to_csv
        df = coco.coco_to_csv(read_json(source), order=params.rle_order)
        with atomic_path(target) as tmp:
            df.to_csv(tmp, index=False)
        print(f"convert: {len(df)} instances -> {target}")
        return
    competition_csv = params.source_format == "kaggle_csv"
    livecell = params.livecell and layout.livecell.is_dir()

    def convert() -> None:
        """Write the COCO files declared in `cfg.layout`."""
        if competition_csv:
            train = coco.csv_to_coco(coco.read_kaggle_csv(layout.train_csv), order=params.rle_order)
        elif params.source_format == "label_images":
            train = coco.label_images_to_coco(
                layout.data / params.images_dir, layout.data / params.labels_dir, layout.data
            )
        else:
            train = coco.instance_masks_to_coco(layout.data / params.images_dir, layout.data)
        coco.check_image_sizes(train, layout.data)
        write_json(layout.coco_train, train)
        if competition_csv:
            # the test images have no labels: their categories are the training ones
            test = coco.unlabelled_coco(layout.test_images, layout.data, train["categories"])
            write_json(layout.coco_test, test)
        print(
            f"convert: {len(train['images'])} images, {len(train['annotations'])} instances "
            f"-> {layout.coco_train}"
        )
        if livecell:
            splits = {"train": layout.coco_livecell_train, "val": layout.coco_livecell_val}
            for split, out in splits.items():
                lc = coco.read_livecell(
                    layout.livecell_annotations(split), layout.livecell_images(split), layout.data
                )
                write_json(out, lc)
                print(
                    f"convert: LIVECell {split}: {len(lc['images'])} images, "
                    f"{len(lc['annotations'])} instances -> {out}"
                )

    # everything convert reads: the CSV (or label folders), the image folders (their listing: a
    # replaced test image makes every stage after it stale), LIVECell's annotation files
    inputs = [layout.train_csv] if competition_csv else []
    if params.source_format == "label_images":
        inputs.append(layout.data / params.labels_dir)
    inputs += cfg.image_folders("train")
    outputs = [layout.coco_train]
    if competition_csv:
        inputs += cfg.image_folders("test")
        outputs.append(layout.coco_test)
    if livecell:
        inputs += [layout.livecell_annotations(split) for split in ("train", "val")]
        outputs += [layout.coco_livecell_train, layout.coco_livecell_val]
    run_stage(
        "convert",
        cfg,
        inputs=inputs,
        outputs=outputs,
        params=params,
        body=convert,
        force=args.force,
    )
