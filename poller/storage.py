"""Attachments: a message's file fetched from Supabase Storage with storage3, and its upload to
WhatsApp made once per message and reused across the message's retries.

Both run in the process that sends, a session worker included (it gets the poller's settings,
without the database URL, which neither needs). Errors are the transports' SendError kinds, so
they cross the worker's channel and reach the dispatcher as any failed send does:
TransientSendError is retried, PermanentSendError fails the message with its text.
"""

import asyncio
import hashlib
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from poller.settings import Settings
from poller.transports.base import PermanentSendError, SendError, TransientSendError

T = TypeVar("T")

# Storage records an object's exact size; a body beyond it (plus this) is not the file the RPC
# checked against WhatsApp's limits (it was replaced since): refused rather than read on.
SIZE_SLACK = 64 * 1024
_LIMIT = "wa_body_limit"  # the request extension carrying a download's bound


@dataclass(frozen=True)
class Attachment:
    """A message's attachment as the job's details carry it (details["attachment"])."""

    bucket: str
    path: str
    kind: Literal["image", "document"]
    mime_type: str
    size: int
    file_name: str

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> "Attachment":
        """The attachment of a job's `details` object (see private.claim_outbound)."""
        a = details["attachment"]
        return cls(a["bucket"], a["path"], a["kind"], a["mime_type"], a["size"], a["file_name"])

    def __str__(self) -> str:
        return f"{self.bucket}/{self.path}"


class StorageNotConfigured(PermanentSendError):
    """WA_STORAGE_URL and WA_SERVICE_ROLE_KEY are unset: no attachment can be fetched."""


class AttachmentNotFound(PermanentSendError):
    """The object or its bucket is gone from Storage."""


class StorageKeyRefused(PermanentSendError):
    """Storage refuses WA_SERVICE_ROLE_KEY (wrong project, rotated, or not a service key)."""


class AttachmentTooBig(PermanentSendError):
    """The object is bigger than the size recorded when the message was queued."""


class StorageUnavailable(TransientSendError):
    """Storage did not answer in time, refused the connection, or failed (5xx, 429)."""


class _BoundedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: int, what: str) -> None:
        self.inner, self.limit, self.what = inner, limit, what

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self.inner:
            read += len(chunk)
            if read > self.limit:
                raise _too_big(self.what, self.limit)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


def _too_big(what: str, limit: int) -> AttachmentTooBig:
    return AttachmentTooBig(
        f"attachment in Storage is bigger than when it was queued: {what} (over {limit} bytes)"
    )


class _BoundedTransport(httpx.AsyncBaseTransport):
    """Refuses a body over the request's bound (extension _LIMIT) as soon as that is known:
    from Content-Length before reading, else while reading; storage3 reads whole bodies."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        limit: int = request.extensions[_LIMIT]
        what = request.url.path
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await response.aclose()
            raise _too_big(what, limit)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_BoundedStream(response.stream, limit, what),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class StorageFetcher:
    """Downloads attachments with the service role key. Make it in the process (and event
    loop) that uses it and close it (aclose) when done; it keeps one connection pool."""

    def __init__(self, settings: Settings) -> None:
        self.timeout = settings.storage_timeout
        self._storage: AsyncStorageClient | None = None
        if settings.storage_url and settings.service_role_key:
            key = settings.service_role_key
            # As supabase-py sends it: the gateway reads apikey, Storage the bearer JWT.
            headers = {"apikey": key, "Authorization": f"Bearer {key}"}
            client = httpx.AsyncClient(
                # The bound counts the bytes on the wire: they must be the file's, not a
                # compressed form of it that could inflate past the bound.
                headers={**headers, "Accept-Encoding": "identity"},
                transport=_BoundedTransport(httpx.AsyncHTTPTransport(http2=True)),
                timeout=None,  # fetch() bounds the whole download instead
                follow_redirects=True,
            )
            url = settings.storage_url.rstrip("/") + "/storage/v1/"
            self._storage = AsyncStorageClient(url, headers, http_client=client)

    async def fetch(self, attachment: Attachment) -> bytes:
        """The object's bytes, at most attachment.size + SIZE_SLACK of them, within
        WA_STORAGE_TIMEOUT. Raises StorageNotConfigured, AttachmentNotFound, StorageKeyRefused,
        AttachmentTooBig (permanent) or StorageUnavailable (transient)."""
        if self._storage is None:
            raise StorageNotConfigured(
                f"attachment {attachment} not sent: set WA_STORAGE_URL and WA_SERVICE_ROLE_KEY "
                "for the poller to read Storage"
            )
        bucket = self._storage.from_(attachment.bucket)
        try:
            async with asyncio.timeout(self.timeout):
                # The authenticated route, not download()'s /object/{bucket}/{path}: that one
                # takes a refused key for the anonymous role, and then answers "Bucket not
                # found" for a private bucket instead of saying that the key is refused.
                response = await bucket._request(
                    "GET",
                    ["object", "authenticated", attachment.bucket, *attachment.path.split("/")],
                    extensions={_LIMIT: attachment.size + SIZE_SLACK},
                )
                return response.content
        except StorageApiError as exc:
            raise _classify(exc, attachment) from exc
        except TimeoutError:
            raise StorageUnavailable(
                f"Storage did not send attachment {attachment} within {self.timeout:g} s"
            ) from None
        except httpx.TransportError as exc:  # refused, reset, DNS: the network or Storage
            raise StorageUnavailable(
                f"Storage unreachable for attachment {attachment}: {type(exc).__name__}: {exc}"
            ) from exc

    async def aclose(self) -> None:
        if self._storage is not None:
            await self._storage.session.aclose()


def _classify(exc: StorageApiError, attachment: Attachment) -> SendError:
    # Storage answers 400 with the real status in the body's statusCode ("404"); storage3 keeps
    # that, or the HTTP status when the body is not Storage's (a gateway's 503 page).
    status = str(exc.status)
    if status == "404":
        return AttachmentNotFound(f"attachment not found in Storage: {attachment}")
    if status in ("401", "403") or exc.code == "InvalidJWT":
        return StorageKeyRefused(
            f"Storage refuses the service key (WA_SERVICE_ROLE_KEY) reading attachment "
            f"{attachment}: {exc.message}"
        )
    if status.startswith("5") or status in ("408", "429"):
        return StorageUnavailable(
            f"Storage failed sending attachment {attachment}: {status} {exc.message}"
        )
    return PermanentSendError(f"Storage refused attachment {attachment}: {status} {exc.message}")


@dataclass
class _Entry(Generic[T]):
    attachment: Attachment
    digest: str
    data: bytes | None  # kept only until the upload succeeds
    upload: T | None


class MediaCache(Generic[T]):
    """Each message's upload to WhatsApp (T: whatever `upload` returns, e.g. neonize's
    UploadResponse), kept so that a retry of the message sends the same upload again.

    Bounded, least recently used first out: at most `max_entries` messages, and at most
    `max_bytes` of fetched files kept for messages whose upload failed (a retry then uploads
    without fetching again). An evicted message is fetched and uploaded again if retried.
    One per session client (worker process), used on its event loop; for neonize:

        media = MediaCache[UploadResponse](StorageFetcher(settings).fetch)
        kind = MediaType.MediaImage if a.kind == "image" else MediaType.MediaDocument
        uploaded = await media.media_for(job_message_id, a, lambda data: client.upload(data, kind))
    """

    def __init__(
        self,
        fetch: Callable[[Attachment], Awaitable[bytes]],
        max_entries: int = 1000,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.fetch = fetch
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[uuid.UUID, _Entry[T]] = OrderedDict()
        self._bytes = 0  # of the entries' data
        # A retry can start while its first attempt still uploads (the poller gave up waiting):
        # it waits for that attempt and reuses its upload.
        self._locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def media_for(
        self,
        message_id: uuid.UUID,
        attachment: Attachment,
        upload: Callable[[bytes], Awaitable[T]],
    ) -> T:
        """The upload of `message_id`'s attachment: the one made before for this message, or
        one made now: the file fetched (unless kept from a failed upload) and passed to
        `upload`, whose result is kept. A file with the same bytes and kind that another
        message uploaded (a send to many groups) is not uploaded again.

        Fetch errors (storage.py's, SendError kinds) and `upload`'s exceptions propagate; after
        a failed upload the file is kept (within max_bytes) for the retry."""
        lock = self._locks.setdefault(message_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(message_id)
            data = None
            if entry is not None and entry.attachment == attachment:
                if entry.upload is not None:
                    self._entries.move_to_end(message_id)
                    return entry.upload
                data = entry.data  # kept from a failed upload
            if data is None:
                data = await self.fetch(attachment)
            digest = hashlib.sha256(data).hexdigest()
            result = self._uploaded(attachment.kind, digest)
            if result is None:
                try:
                    result = await upload(data)
                except BaseException:
                    self._put(message_id, _Entry(attachment, digest, data, None))
                    raise
            self._put(message_id, _Entry(attachment, digest, None, result))
            return result

    def forget(self, message_id: uuid.UUID) -> None:
        """Drop a message's upload: WhatsApp refused a send for its media (expired, say),
        so its next attempt must upload again."""
        entry = self._entries.pop(message_id, None)
        if entry is not None and entry.data is not None:
            self._bytes -= len(entry.data)

    def _uploaded(self, kind: str, digest: str) -> T | None:
        # WhatsApp derives the media keys per kind: an image's upload is no document's.
        for entry in self._entries.values():
            if entry.upload is not None and (entry.digest, entry.attachment.kind) == (digest, kind):
                return entry.upload
        return None

    def _put(self, message_id: uuid.UUID, entry: _Entry[T]) -> None:
        self.forget(message_id)
        self._entries[message_id] = entry
        if entry.data is not None:
            self._bytes += len(entry.data)
        while len(self._entries) > self.max_entries:
            self.forget(next(iter(self._entries)))
        # An entry holds a file only while it has no upload: nothing else of it is worth keeping.
        for old_id in [i for i, e in self._entries.items() if e.data is not None]:
            if self._bytes <= self.max_bytes:
                break
            self.forget(old_id)
