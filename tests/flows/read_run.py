"""Reads every artifact of every task of a run through the Client API and prints, as JSON,
a digest of each, the join step's values, the seconds it took and which classes Metaflow
used, so two processes can compare what they read: ``python read_run.py FlowName/run_id [step]``
(only that step's tasks when a step is named)."""

import hashlib
import json
import pickle
import sys
import time


def digest(value):
    if isinstance(value, bytes | bytearray):
        return "bytes:" + hashlib.sha256(value).hexdigest()
    return "pickle:" + hashlib.sha256(pickle.dumps(value, protocol=4)).hexdigest()


def main(pathspec, only_step=None):
    import metaflow
    from metaflow import Run, namespace
    from metaflow.plugins import DATASTORES

    namespace(None)
    began = time.perf_counter()
    run = Run(pathspec)
    artifacts = {}
    values = {}
    for step in run:
        if only_step and step.id != only_step:
            continue
        for task in step:
            index = "-" if task.index is None else task.index
            for artifact in task:
                data = artifact.data
                artifacts[f"{step.id}/{index}/{artifact.id}"] = digest(data)
                if step.id == "join" and not isinstance(data, bytes | bytearray):
                    values[artifact.id] = data
    seconds = time.perf_counter() - began
    print(
        json.dumps(
            {
                "artifacts": artifacts,
                "join": values,
                "successful": run.successful,
                "seconds": seconds,
                "datastore": next(d for d in DATASTORES if d.TYPE == "s3").__module__,
                "metaflow.S3": metaflow.S3.__module__,
            },
            default=repr,
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
