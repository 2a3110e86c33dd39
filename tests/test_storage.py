"""Attachments from Storage (poller/storage.py) against the stand-in server of
tests/storage_server.py: downloads and each failure's kind, the size bound and the timeout, the
upload cache, and the settings that configure them."""

import asyncio
import base64
import json
import os
import socket
import uuid

import pytest
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from poller.errors import ConfigError
from poller.settings import Settings, load_settings
from poller.storage import (
    SIZE_SLACK,
    Attachment,
    AttachmentNotFound,
    AttachmentTooBig,
    MediaCache,
    StorageFetcher,
    StorageKeyRefused,
    StorageNotConfigured,
    StorageUnavailable,
)
from poller.transports.base import PermanentSendError, TransientSendError
from tests.storage_server import StorageServer


def jwt(role: str) -> str:
    """A JWT of `role` (the stand-in checks the whole string, not the signature)."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'role': role})}.c2lnbmF0dXJl"


KEY = jwt("service_role")
OTHER_KEY = jwt("service_role") + "x"  # another project's, or a rotated one


@pytest.fixture
def server(tmp_path):
    with StorageServer(tmp_path, KEY) as storage:
        yield storage


def settings(url: str | None, key: str | None = KEY, timeout: float = 10.0) -> Settings:
    key = key if url else None
    return Settings(_env_file=None, storage_url=url, service_role_key=key, storage_timeout=timeout)


def attachment(path: str, size: int, kind: str = "document", bucket: str = "claims") -> Attachment:
    return Attachment(bucket, path, kind, "application/pdf", size, path.rsplit("/", 1)[-1])


async def fetch(config: Settings, what: Attachment) -> bytes:
    fetcher = StorageFetcher(config)
    try:
        return await fetcher.fetch(what)
    finally:
        await fetcher.aclose()


def test_a_download_is_the_objects_bytes_through_the_authenticated_route(server):
    data = os.urandom(300_000)
    server.put("claims", "team 1/policy v2.pdf", data)
    got = asyncio.run(fetch(settings(server.url), attachment("team 1/policy v2.pdf", len(data))))
    assert got == data
    assert server.requests == ["/storage/v1/object/authenticated/claims/team%201/policy%20v2.pdf"]


def test_the_attachment_of_a_jobs_details():
    details = {
        "attachment": {"bucket": "claims", "path": "a/b.png", "kind": "image",
                       "mime_type": "image/png", "size": 12, "file_name": "b.png"},
        "mentions": {"everyone": True},
    }  # fmt: skip
    got = Attachment.from_details(details)
    assert got == Attachment("claims", "a/b.png", "image", "image/png", 12, "b.png")
    assert str(got) == "claims/a/b.png"


@pytest.mark.parametrize("bucket", ["claims", "gone"])
def test_a_missing_object_or_bucket_is_permanent(server, bucket):
    server.put("claims", "other.pdf", b"x")
    with pytest.raises(AttachmentNotFound) as caught:
        asyncio.run(fetch(settings(server.url), attachment("x/missing.pdf", 1, bucket=bucket)))
    assert isinstance(caught.value, PermanentSendError)
    assert str(caught.value) == f"attachment not found in Storage: {bucket}/x/missing.pdf"


def test_a_503_is_transient_and_the_retry_gets_the_file(server):
    server.put("claims", "p.pdf", b"%PDF-1.7")
    server.fail_next(1)
    with pytest.raises(StorageUnavailable) as caught:
        asyncio.run(fetch(settings(server.url), attachment("p.pdf", 8)))
    assert isinstance(caught.value, TransientSendError) and "503" in str(caught.value)
    assert asyncio.run(fetch(settings(server.url), attachment("p.pdf", 8))) == b"%PDF-1.7"


@pytest.mark.parametrize("gateway", [True, False], ids=["gateway 401", "storage AccessDenied"])
def test_a_refused_key_is_permanent_and_says_so(tmp_path, gateway):
    with StorageServer(tmp_path, KEY, check_apikey=gateway) as server:
        server.put("claims", "p.pdf", b"x")
        with pytest.raises(StorageKeyRefused) as caught:
            asyncio.run(fetch(settings(server.url, OTHER_KEY), attachment("p.pdf", 1)))
    assert isinstance(caught.value, PermanentSendError)
    assert "Storage refuses the service key (WA_SERVICE_ROLE_KEY)" in str(caught.value)


def test_storage3s_download_route_takes_a_refused_key_for_anon(tmp_path):
    """Why fetch() uses the authenticated route: download()'s says "Bucket not found"."""
    with StorageServer(tmp_path, KEY, check_apikey=False) as server:
        server.put("claims", "p.pdf", b"x")

        async def download(key: str) -> bytes:
            headers = {"apikey": key, "Authorization": f"Bearer {key}"}
            async with AsyncStorageClient(server.url + "/storage/v1/", headers) as client:
                return await client.from_("claims").download("p.pdf")

        assert asyncio.run(download(KEY)) == b"x"
        with pytest.raises(StorageApiError) as caught:
            asyncio.run(download(OTHER_KEY))
    assert (caught.value.status, caught.value.message) == ("404", "Bucket not found")
    assert server.requests[-1] == "/storage/v1/object/claims/p.pdf"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_recorded_size_is_refused(server, chunked):
    server.chunked = chunked
    server.put("claims", "big.pdf", bytes(1000 + SIZE_SLACK + 1))
    server.put("claims", "fits.pdf", bytes(1000 + SIZE_SLACK))
    with pytest.raises(AttachmentTooBig) as caught:
        asyncio.run(fetch(settings(server.url), attachment("big.pdf", 1000)))
    assert isinstance(caught.value, PermanentSendError)
    assert "bigger than when it was queued" in str(caught.value)
    assert len(asyncio.run(fetch(settings(server.url), attachment("fits.pdf", 1000)))) == (
        1000 + SIZE_SLACK
    )


def test_a_slow_storage_is_a_transient_timeout(server):
    server.put("claims", "p.pdf", b"x")
    server.delay = 2.0
    with pytest.raises(StorageUnavailable, match=r"within 0\.3 s"):
        asyncio.run(fetch(settings(server.url, timeout=0.3), attachment("p.pdf", 1)))


def test_a_refused_connection_is_transient():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(StorageUnavailable, match="Storage unreachable"):
            asyncio.run(fetch(settings(url), attachment("p.pdf", 1)))


def test_without_the_settings_an_attachment_fails_permanently_saying_what_to_set():
    with pytest.raises(StorageNotConfigured, match="set WA_STORAGE_URL and WA_SERVICE_ROLE_KEY"):
        asyncio.run(fetch(settings(None), attachment("p.pdf", 1)))


class Uploads:
    """An upload to WhatsApp that records its calls and can be made to fail."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.failing = False

    async def __call__(self, data: bytes) -> dict:
        self.calls.append(data)
        await asyncio.sleep(0.05)
        if self.failing:
            raise TransientSendError("upload failed")
        return {"direct_path": f"/v/{len(self.calls)}", "file_length": len(data)}


async def with_cache(server: StorageServer, test, **bounds) -> None:
    fetcher = StorageFetcher(settings(server.url))
    try:
        await test(MediaCache(fetcher.fetch, **bounds))
    finally:
        await fetcher.aclose()


def test_a_messages_retries_reuse_its_upload_and_other_messages_upload_their_own(server):
    server.put("claims", "a.pdf", b"a" * 100)
    server.put("claims", "b.pdf", b"b" * 100)
    a, b = attachment("a.pdf", 100), attachment("b.pdf", 100)
    first, second = uuid.uuid4(), uuid.uuid4()
    upload = Uploads()

    async def test(cache: MediaCache[dict]) -> None:
        got = [await cache.media_for(first, a, upload) for _ in range(3)]
        assert got == [{"direct_path": "/v/1", "file_length": 100}] * 3
        assert (await cache.media_for(second, b, upload))["direct_path"] == "/v/2"

    asyncio.run(with_cache(server, test))
    assert upload.calls == [b"a" * 100, b"b" * 100]
    assert len(server.requests) == 2


def test_a_retry_that_starts_during_the_first_upload_waits_for_it(server):
    server.put("claims", "a.pdf", b"a")
    message, upload = uuid.uuid4(), Uploads()

    async def test(cache: MediaCache[dict]) -> None:
        got = await asyncio.gather(
            *(cache.media_for(message, attachment("a.pdf", 1), upload) for _ in range(2))
        )
        assert got[0] is got[1]

    asyncio.run(with_cache(server, test))
    assert len(upload.calls) == 1 and len(server.requests) == 1


def test_the_same_file_to_many_groups_is_uploaded_once_per_kind(server):
    server.put("claims", "photo.png", b"png" * 10)
    doc, image = attachment("photo.png", 30), attachment("photo.png", 30, kind="image")
    upload = Uploads()

    async def test(cache: MediaCache[dict]) -> None:
        docs = [await cache.media_for(uuid.uuid4(), doc, upload) for _ in range(3)]
        assert docs[0] is docs[1] is docs[2]
        assert await cache.media_for(uuid.uuid4(), image, upload) is not docs[0]

    asyncio.run(with_cache(server, test))
    assert len(upload.calls) == 2  # one document, one image
    assert len(server.requests) == 4  # each message fetches, to know its bytes


def test_a_failed_upload_keeps_the_file_within_the_bytes_bound(server):
    server.put("claims", "a.pdf", b"a" * 600)
    server.put("claims", "b.pdf", b"b" * 600)
    a, b = attachment("a.pdf", 600), attachment("b.pdf", 600)
    first, second = uuid.uuid4(), uuid.uuid4()
    upload = Uploads()

    async def test(cache: MediaCache[dict]) -> None:
        upload.failing = True
        for message, what in ((first, a), (second, b)):
            with pytest.raises(TransientSendError):
                await cache.media_for(message, what, upload)
        assert len(server.requests) == 2
        upload.failing = False
        await cache.media_for(second, b, upload)  # kept: uploaded without a fetch
        assert len(server.requests) == 2
        await cache.media_for(first, a, upload)  # evicted by the second: fetched again
        assert len(server.requests) == 3

    asyncio.run(with_cache(server, test, max_bytes=1000))
    assert upload.calls == [b"a" * 600, b"b" * 600, b"b" * 600, b"a" * 600]


def test_the_least_recently_used_upload_goes_first_and_forget_drops_one(server):
    for name in "abc":
        server.put("claims", f"{name}.pdf", name.encode())
    messages = {name: uuid.uuid4() for name in "abc"}
    upload = Uploads()

    async def send(cache: MediaCache[dict], name: str) -> dict:
        return await cache.media_for(messages[name], attachment(f"{name}.pdf", 1), upload)

    async def test(cache: MediaCache[dict]) -> None:
        for name in "abac":  # b is the least recently used when c comes
            await send(cache, name)
        assert len(upload.calls) == 3
        await send(cache, "a")
        assert len(upload.calls) == 3
        await send(cache, "b")  # evicted
        assert len(upload.calls) == 4
        cache.forget(messages["b"])
        await send(cache, "b")
        assert len(upload.calls) == 5

    asyncio.run(with_cache(server, test, max_entries=2))


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("WA_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize(
    "url",
    ["abc.supabase.co", "ftp://abc.supabase.co", "https://abc.supabase.co/storage/v1",
     "https://abc.supabase.co:port", "https://abc.supabase.co?x=1", "https://"],
)  # fmt: skip
def test_a_storage_url_that_is_not_a_project_url_is_one_line(clean_env, url):
    clean_env.setenv("WA_STORAGE_URL", url)
    clean_env.setenv("WA_SERVICE_ROLE_KEY", KEY)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        f"invalid setting: WA_STORAGE_URL={url!r}: should be the project's URL, "
        "https://<ref>.supabase.co (http://127.0.0.1:54321 for `supabase start`), "
        "without /storage/v1"
    )


@pytest.mark.parametrize(
    ("key", "why"),
    [(jwt("anon"), "this JWT's role is 'anon'"), ("sb_publishable_abc", "not a publishable key"),
     ("e30.!!!.sig", "does not decode")],
)  # fmt: skip
def test_a_key_that_cannot_be_the_service_key_is_refused_without_showing_it(clean_env, key, why):
    clean_env.setenv("WA_STORAGE_URL", "https://abc.supabase.co")
    clean_env.setenv("WA_SERVICE_ROLE_KEY", key)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    line = str(caught.value)
    assert line.startswith("invalid setting: WA_SERVICE_ROLE_KEY='***': should be ") and why in line
    assert key not in line


@pytest.mark.parametrize("only", ["WA_STORAGE_URL", "WA_SERVICE_ROLE_KEY"])
def test_the_url_and_the_key_go_together(clean_env, only):
    clean_env.setenv(only, {"WA_STORAGE_URL": "https://abc.supabase.co"}.get(only, KEY))
    with pytest.raises(ConfigError, match="WA_STORAGE_URL and WA_SERVICE_ROLE_KEY go together"):
        load_settings()


def test_the_storage_settings_accept_a_project_url_and_a_secret_key(clean_env):
    clean_env.setenv("WA_STORAGE_URL", "http://127.0.0.1:54321/")
    clean_env.setenv("WA_SERVICE_ROLE_KEY", "sb_secret_abc\n")
    loaded = load_settings()
    assert (loaded.storage_url, loaded.service_role_key) == (
        "http://127.0.0.1:54321/",
        "sb_secret_abc",
    )
