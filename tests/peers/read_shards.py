"""Run by a peer virtualenv's Python (webdataset, wids, torch): read the shards a
mount serves the way a training job would, and print what was read as JSON on
OUT: {"loader": [[key, {extension: sha256}], ...], "wids": [...], "wids_len": N}
(a file: wids prints its warnings on stdout). wids copies each shard it reads
into CACHE first (its way with any url), then reads samples there.

Usage: python read_shards.py MOUNT STEM SEED OUT CACHE
"""

import hashlib
import json
import os
import random
import sys

import webdataset as wds
import wids


def digest(sample: dict) -> dict:
    return {k: hashlib.sha256(v).hexdigest() for k, v in sample.items() if not k.startswith("__")}


def main() -> None:
    mount, stem, seed, out, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    shards = sorted(os.path.join(mount, n) for n in os.listdir(mount) if n.endswith(".tar"))
    loaded = [[s["__key__"], digest(s)] for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)]
    dataset = wids.ShardListDataset(os.path.join(mount, f"{stem}.wids.json"), transformations=[],
                                    cache_dir=cache)
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    at_random = []
    for i in order:
        sample = dataset[i]
        at_random.append([sample["__key__"], {k.lstrip("."): v for k, v in digest(
            {k: v.getvalue() if hasattr(v, "getvalue") else v for k, v in sample.items()}).items()}])
    with open(out, "w") as f:
        json.dump({"loader": loaded, "wids": at_random, "wids_len": len(dataset)}, f)


if __name__ == "__main__":
    main()
