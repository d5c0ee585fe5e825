"""A Metaflow flow whose steps use s3fast's sync facade: `S3(run=self)` addresses
<DATATOOLS_S3ROOT>/<FlowName>/<run_id>/ exactly as metaflow.S3 does.

    METAFLOW_DATATOOLS_S3ROOT=s3://my-bucket/data python examples/metaflow_flow.py run
"""

from metaflow import FlowSpec, step

from s3fast import S3


class S3FastDemoFlow(FlowSpec):
    @step
    def start(self):
        with S3(run=self) as s3:
            urls = s3.put_many([(f"shard/{i}", f"payload {i}" * 100) for i in range(10)])
            s3.put("summary.json", '{"shards": 10}', metadata={"kind": "summary"})
        self.urls = [url for _, url in urls]
        self.next(self.end)

    @step
    def end(self):
        with S3(run=self) as s3:
            objs = s3.get_recursive(["shard"])
            total = sum(o.size for o in objs)
            summary = s3.get("summary.json")
        assert len(objs) == 10 and summary.metadata == {"kind": "summary"}
        print(
            f"s3fast read {len(objs)} objects, {total} bytes, from {self.urls[0].rsplit('/', 2)[0]}"
        )


if __name__ == "__main__":
    S3FastDemoFlow()
