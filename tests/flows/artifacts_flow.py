"""A flow that moves artifacts through Metaflow's datastore: a start step storing small
objects, one large bytes object and a dict of small values, a foreach, and a join that reads
them back; two IncludeFile parameters (a local file uploaded at start, and an object already
in S3). Each step records which classes Metaflow used for the datastore, IncludeFile and
``metaflow.S3``, and a digest of what it read, so tests and the benchmark can check both.

    python tests/flows/artifacts_flow.py --datastore=s3 run --big-mib 200 --width 8
"""

import hashlib
import random

from metaflow import S3, FlowSpec, IncludeFile, Parameter, current, step


def big_bytes(mib):
    """``mib`` MiB of seeded random bytes (incompressible, like most model weights)."""
    return random.Random(1).randbytes(mib * 1024 * 1024)


def used_classes(flow):
    from metaflow.includefile import _dict_dataclients

    return {
        "datastore": type(flow._datastore._storage_impl).__module__,
        "includefile": _dict_dataclients["s3"].__module__,
        "metaflow.S3": S3.__module__,
    }


class ArtifactsFlow(FlowSpec):
    big_mib = Parameter("big-mib", type=int, default=200, help="size of the large artifact")
    width = Parameter("width", type=int, default=8, help="foreach width")
    small = Parameter("small", type=int, default=1000, help="values in the dict artifact")
    many = Parameter("many", type=int, default=0, help="extra small artifacts stored by start")
    local_file = IncludeFile("local-file", is_text=False, required=False)
    s3_file = IncludeFile("s3-file", is_text=False, required=False)

    @step
    def start(self):
        self.classes = {"start": used_classes(self)}
        self.number = 42
        self.text = "small text artifact"
        self.values = [1.5, None, ("a", "b")]
        self.big = big_bytes(self.big_mib)
        self.mapping = {f"key-{i:04d}": i * i for i in range(self.small)}
        self.items = list(range(self.width))
        for i in range(self.many):  # distinct in every run: nothing is already stored
            setattr(self, f"m{i:05d}", (i, current.run_id))
        with S3(run=self) as s3:  # whichever class metaflow.S3 is, addressed the same way
            self.note_url = s3.put("note.txt", "written with metaflow.S3 in start")
        self.next(self.fan, foreach="items")

    @step
    def fan(self):
        self.classes = {**self.classes, "fan": used_classes(self)}
        self.square = self.input * self.input + self.mapping["key-0003"]
        self.text_len = len(self.text)
        self.next(self.join)

    @step
    def join(self, inputs):
        first = inputs[0]
        self.classes = {**first.classes, "join": used_classes(self)}
        self.fan_classes = [i.classes["fan"] for i in inputs]
        self.squares = sorted(i.square for i in inputs)
        self.big_sha = hashlib.sha256(first.big).hexdigest()
        self.mapping_sum = sum(first.mapping.values())
        self.local_sha = hashlib.sha256(first.local_file).hexdigest() if first.local_file else None
        self.s3_sha = hashlib.sha256(first.s3_file).hexdigest() if first.s3_file else None
        self.joined_by = current.run_id
        self.next(self.end)

    @step
    def end(self):
        print(f"artifacts flow: big {self.big_sha[:12]} squares {self.squares}")


if __name__ == "__main__":
    ArtifactsFlow()
