"""Fan out over a prefix with Metaflow's foreach, one shard of the data per branch.

`start` lists the input prefix and splits its objects into N shards balanced by bytes
(`s3fast.shard`); each `process` branch downloads its shard with s3fast (starting on the first
object as soon as it lands, via `iter_get_many`), counts lines, words and bytes, and writes its
result with `S3(run=self)`; `join` reads the branch results back and writes the total.
With `--with batch` (or kubernetes) every branch runs on its own machine.

    METAFLOW_DATATOOLS_S3ROOT=s3://my-bucket/data \\
        python examples/sharded_flow.py run --prefix s3://my-bucket/corpus/ --shards 8
"""

import json

from metaflow import FlowSpec, Parameter, step

import s3fast
from s3fast import S3


class ShardedFlow(FlowSpec):
    prefix = Parameter("prefix", help="s3:// prefix of the objects to process", required=True)
    shards = Parameter("shards", help="number of foreach branches", default=4, type=int)

    @step
    def start(self):
        with S3() as s3:
            objects = s3.list_recursive([self.prefix])
        # Keep plain (url, size) pairs: artifacts are pickled, S3Objects hold temp paths.
        self.shard_list = [
            [(obj.url, obj.size) for obj in shard] for shard in s3fast.shard(objects, self.shards)
        ]
        print(f"{len(objects)} objects in {self.shards} shards of", end=" ")
        print([sum(size for _, size in shard) for shard in self.shard_list], "bytes")
        self.next(self.process, foreach="shard_list")

    @step
    def process(self):
        counts = {"shard": self.index, "objects": 0, "lines": 0, "words": 0, "bytes": 0}
        urls = [url for url, _ in self.input]
        with S3() as s3:
            for obj in s3.iter_get_many(urls):  # in completion order
                text = obj.text
                counts["objects"] += 1
                counts["lines"] += text.count("\n")
                counts["words"] += len(text.split())
                counts["bytes"] += obj.size
            # Downloads land in current.tempdir when the flow sets one (METAFLOW_TEMPDIR).
            print(f"shard {self.index}: {counts['objects']} objects, downloaded to {s3.tmpdirs}")
        counts["urls"] = sorted(urls)
        with S3(run=self) as s3:
            self.result_url = s3.put(f"results/shard-{self.index:04d}.json", json.dumps(counts))
        self.next(self.join)

    @step
    def join(self, inputs):
        with S3(run=self) as s3:
            results = [json.loads(obj.text) for obj in s3.get_recursive(["results"])]
            self.total = {
                name: sum(r[name] for r in results)
                for name in ("objects", "lines", "words", "bytes")
            }
            s3.put("total.json", json.dumps(self.total))
        self.result_urls = sorted(inp.result_url for inp in inputs)
        self.next(self.end)

    @step
    def end(self):
        t = self.total
        print(
            f"sharded flow: {t['objects']} objects, {t['lines']} lines, {t['words']} words, "
            f"{t['bytes']} bytes in {len(self.result_urls)} shards"
        )


if __name__ == "__main__":
    ShardedFlow()
