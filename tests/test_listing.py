"""Listings: recursive calls never return sibling prefixes (where metaflow.S3 does), zero-byte
objects exist, and the next page is asked for with the token found in the raw page."""

from __future__ import annotations

import pytest

from s3fast import S3


def test_recursive_calls_skip_sibling_prefixes(bucket: str, boto: object) -> None:
    for key in ["data/dir/a", "data/dir/sub/b", "data/dir", "data/dir_v2/c", "data/dirt"]:
        boto.put_object(Bucket=bucket, Key=key, Body=key.encode())  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{bucket}/data") as s3:
        got = {o.url.split("/data/", 1)[1] for o in s3.get_recursive(["dir"])}
        assert got == {"dir", "dir/a", "dir/sub/b"}
        assert {o.key for o in s3.list_recursive(["dir"])} == {"a", "sub/b"}
    with S3(s3root=f"s3://{bucket}/data/dir") as s3:
        # the root object itself keeps its full URL as key, as in metaflow
        assert {o.key for o in s3.get_all()} == {f"s3://{bucket}/data/dir", "a", "sub/b"}


def test_zero_byte_objects_exist_in_listings(bucket: str, boto: object) -> None:
    boto.put_object(Bucket=bucket, Key="p/empty", Body=b"")  # type: ignore[attr-defined]
    with S3(s3root=f"s3://{bucket}/p") as s3:
        (obj,) = s3.list_paths()
        assert obj.exists and obj.size == 0  # metaflow.S3 reports exists=False here


@pytest.mark.unit
def test_listing_token_is_found_before_the_parse() -> None:
    """The next page is asked for with the token found in the raw page; the parser agrees."""
    from s3fast._engine.http import parse_listing, peek_token

    def page(truncated: str, token: str | None) -> bytes:
        tail = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<IsTruncated>{truncated}</IsTruncated><EncodingType>url</EncodingType>"
            "<Contents><Key>a%2Bb+c</Key><Size>3</Size></Contents>"
            f"<CommonPrefixes><Prefix>d%2F</Prefix></CommonPrefixes>{tail}</ListBucketResult>"
        ).encode()

    body = page("true", "1/a&amp;b=&lt;c&gt;&quot;")
    assert peek_token(body) == '1/a&b=<c>"'
    assert parse_listing(body) == ([("a+b c", 3), ("d/", None)], peek_token(body))
    last = page("false", "ignored")
    assert peek_token(last) is None and parse_listing(last)[1] is None
    assert peek_token(page("true", None)) is None
    with pytest.raises(ConnectionError, match="without a continuation token"):
        parse_listing(page("true", None))


def _listing_page(entries: list[tuple[str, int | None]], *, pretty: bool = False) -> bytes:
    """A ListObjectsV2 page as S3 writes it (``pretty``: indented, as some servers do)."""
    from xml.sax.saxutils import escape

    def text(value: str) -> str:  # XML 1.0 keeps a raw CR out of text: S3 writes &#13;
        return escape(value, {'"': "&quot;", "'": "&apos;"}).replace("\r", "&#13;")

    sep = "\n  " if pretty else ""
    parts = [
        f"<Contents>{sep}<Key>{text(k)}</Key><LastModified>2026-11-29T12:00:00.000Z"
        f"</LastModified><ETag>&quot;abc&quot;</ETag><Size>{s}</Size><Owner><ID>x</ID>"
        "</Owner><StorageClass>STANDARD</StorageClass></Contents>"
        if s is not None
        else f"<CommonPrefixes><Prefix>{text(k)}</Prefix></CommonPrefixes>"
        for k, s in entries
    ]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>b</Name><Prefix>p&amp;/</Prefix><KeyCount>{len(entries)}</KeyCount>"
        "<MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>"
        "<NextContinuationToken>t&amp;1</NextContinuationToken>"
        + sep.join(parts)
        + "</ListBucketResult>\n"
    ).encode()


@pytest.mark.unit
def test_listing_scan_reads_what_the_xml_parser_reads() -> None:
    """The fast scan of a page (no tree) gives the XML parser's result for every key S3 can
    hold in a page, and leaves any page outside the plain shape to the parser."""
    import random

    from s3fast._engine.http import _parse_listing_tree, _scan_listing, parse_listing

    rng = random.Random(7)
    alphabet = "ab/ &<>\"'=;#%+\t\n\r\x7fé😀\u2028&amp;&#13;"
    for pretty in (False, True):
        for _ in range(200):
            entries: list[tuple[str, int | None]] = [
                ("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))), size)
                for size in rng.choices([0, 1, 2**40, None], k=rng.randint(0, 20))
            ]
            entries.sort(key=lambda e: e[1] is None)  # objects first, then prefixes
            body = _listing_page(entries, pretty=pretty)
            scanned = _scan_listing(body)
            assert scanned is not None  # the plain shape is read by the scan...
            assert scanned == _parse_listing_tree(body)  # ...with the parser's result
            assert scanned[0] == entries and scanned[2] == "t&1"

    plain = _listing_page([("k&x", 5), ("d/", None)])
    assert _scan_listing(plain) is not None
    # empty elements, as moto writes them (<Prefix/>), and lower-case utf-8: still the scan's
    for variant in (
        plain.replace(b"<Owner><ID>x</ID></Owner>", b"<Owner/>"),
        plain.replace(b"<Prefix>p&amp;/</Prefix>", b"<Prefix/>").replace(b"UTF-8", b"utf-8"),
        plain.replace(b"<Size>5</Size>", b"<Size/>"),
    ):
        scanned = _scan_listing(variant)
        assert scanned is not None and scanned == _parse_listing_tree(variant), variant
    for variant in (  # an empty key or common prefix: the parser's
        plain.replace(b"<Key>k&amp;x</Key>", b"<Key/>"),
        plain.replace(b"<Prefix>d/</Prefix>", b"<Prefix/>"),
    ):
        assert _scan_listing(variant) is None
    odd = {
        "an attribute": plain.replace(b"<Contents>", b'<Contents a="1">'),
        "a comment": plain.replace(b"<Name>", b"<!-- c --><Name>"),
        "CDATA": plain.replace(b"<Key>k&amp;x</Key>", b"<Key><![CDATA[k&x]]></Key>"),
        "a prefixed name": plain.replace(b"<Name>b</Name>", b"<s3:Name>b</s3:Name>").replace(
            b"<ListBucketResult ", b'<ListBucketResult xmlns:s3="urn:s3" '
        ),
        "a raw CR": plain.replace(b"k&amp;x", b"k\r\nx"),
        "a KeyCount that disagrees": plain.replace(b"<KeyCount>2<", b"<KeyCount>3<"),
        "an unclosed root": plain.replace(b"</ListBucketResult>", b""),
        "another encoding": plain.replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"'),
    }
    for what, body in odd.items():
        assert _scan_listing(body) is None, what
        if what != "an unclosed root":
            assert parse_listing(body)[0] == [(k, s) for k, s in _parse_listing_tree(body)[0]], what


def test_real_servers_pages_take_the_scan(
    bucket: str, server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages SeaweedFS and moto send to s3fast's listings (awkward keys, common prefixes,
    several pages) are in the shape the scan reads, and it reads them as the XML parser does."""
    from s3fast._engine import http, listing

    pages: list[bytes] = []

    def parse(body: bytes) -> tuple[list[tuple[str, int | None]], str | None]:
        pages.append(body)
        return http.parse_listing(body)

    monkeypatch.setattr(listing, "parse_listing", parse)
    keys = ["a&b", "c d", "é/x", "p/q", "z<>\"'", "tab\tx", "plus+sign"]
    keys += [f"many/{i:04d}" for i in range(1100)]  # two pages
    with S3(s3root=f"s3://{bucket}") as s3:
        s3.put_many([(k, b"x") for k in keys])
        assert sorted(o.key for o in s3.list_recursive()) == sorted(keys)
        assert len(s3.list_paths()) == 8  # 5 objects and 3 common prefixes at the top
    assert len(pages) >= 3
    for body in pages:
        scanned = http._scan_listing(body)
        assert scanned is not None, body[:300]
        assert scanned == http._parse_listing_tree(body)
