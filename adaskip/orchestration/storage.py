"""One storage location for everything Ray persists: Train checkpoints, Tune state, the evaluate and study caches.

It is a folder every node can reach: a local path on one machine, a shared mount (NFS, Lustre) on a cluster, or an
object store URI (``s3://bucket/prefix``; S3-compatible stores such as MinIO take their endpoint from
``AWS_ENDPOINT_URL`` and keys from the usual AWS variables). Everything goes through pyarrow's filesystem API, the
one Ray uses itself, so the driver and the workers never assume a path they share. No Ray import here.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import pandas as pd
import pyarrow.fs as pafs

from ..config import storage_problem
from ..errors import AdaskipError

ENV = "ADASKIP_STORAGE"
DEFAULT_FOLDER = ".ray_results"


class StorageError(AdaskipError):
    """A storage URI adaskip will not use as given."""


def check_uri(uri: str, where: str = ENV) -> None:
    """Refuse a storage URI that params.yaml would refuse (``cluster.storage``'s rule: a scheme Ray can open, no
    credential, which Ray would persist with every run and trial)."""
    if problem := storage_problem(uri):
        raise StorageError(f"{where}: {problem}")


def s3_credential_source() -> str:
    """Where the AWS SDK's default chain finds this process's S3 credentials, in its order (never their value)."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return "environment (AWS_ACCESS_KEY_ID" + (", AWS_SESSION_TOKEN)" if env.get("AWS_SESSION_TOKEN") else ")")
    shared = Path(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")).expanduser()
    if shared.is_file():
        return f"shared credentials file {shared} (profile {env.get('AWS_PROFILE', 'default')})"
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") and env.get("AWS_ROLE_ARN"):
        return "web identity (AWS_ROLE_ARN, e.g. a Kubernetes service account)"
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return "container role (AWS_CONTAINER_CREDENTIALS_*)"
    return "instance role (EC2 instance metadata), if the node has one"


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it. S3 credentials come from the AWS SDK's default chain in the process
    that opens it (the environment, ~/.aws, a web identity such as a Kubernetes service account, an instance role),
    never from here: a filesystem given keys would carry them in its pickle, into Ray's and Tune's state."""
    url = urlparse(uri)
    if url.scheme == "s3":
        env = os.environ.get
        endpoint = env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL")
        kwargs = {}
        if endpoint:
            ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs = {"endpoint_override": ep.netloc, "scheme": ep.scheme}
        fs = pafs.S3FileSystem(region=env("AWS_REGION") or env("AWS_DEFAULT_REGION"), **kwargs)
        return fs, f"{url.netloc}{url.path}".rstrip("/")
    if url.scheme:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


@dataclass(frozen=True)
class Storage:
    """A storage location. It pickles as its URI, so a Ray task on any node opens the same place with that node's
    own credentials."""

    uri: str
    filesystem: pafs.FileSystem = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    path: str = field(default="", compare=False, repr=False)  # the root inside ``filesystem`` (Ray's storage_path)

    def __post_init__(self) -> None:
        if self.filesystem is None:  # a URI given: checked once (its children, made by child(), add a plain name)
            check_uri(self.uri)
            fs, path = _filesystem(self.uri)
            object.__setattr__(self, "filesystem", fs)
            object.__setattr__(self, "path", path)

    def __reduce__(self):
        return Storage, (self.uri,)

    @classmethod
    def resolve(cls, configured: Optional[str], root: str | os.PathLike) -> "Storage":
        """``ADASKIP_STORAGE`` wins, then params.yaml's ``cluster.storage``, then ``<root>/.ray_results``.
        A relative path is taken from ``root``; Ray needs absolute ones."""
        uri = os.environ.get(ENV) or configured or DEFAULT_FOLDER
        if "://" not in uri:
            uri = str((Path(root) / uri).resolve())
        return cls(uri.rstrip("/"))

    @property
    def is_local_path(self) -> bool:
        """A path of this machine's filesystem (shared with other nodes only if mounted there too)."""
        return "://" not in self.uri

    def _p(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    def child(self, name: str) -> "Storage":
        return Storage(f"{self.uri}/{name}", self.filesystem, self._p(name))

    def exists(self, name: str = "") -> bool:
        return self.filesystem.get_file_info(self._p(name)).type != pafs.FileType.NotFound

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a whole file; on a local or shared path via a temporary name then a rename, so a reader (or a
        resumed stage) never sees half a file. Object stores make a put visible only once complete."""
        fs, target = self.filesystem, self._p(name)
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp" if self.is_local_path else target
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        if tmp != target:
            fs.move(tmp, target)

    def read_bytes(self, name: str) -> bytes:
        with self.filesystem.open_input_stream(self._p(name)) as f:
            return f.read()

    def write_csv(self, name: str, table: pd.DataFrame) -> None:
        self.write_bytes(name, table.to_csv(index=False).encode())

    def read_csv(self, name: str) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(self.read_bytes(name)), dtype={"skip": str})

    def list(self, name: str = "") -> list[str]:
        """The names in folder ``name`` (none if it is not there)."""
        found = self.filesystem.get_file_info(pafs.FileSelector(self._p(name), allow_not_found=True))
        return sorted(i.base_name for i in found)

    def remove(self, name: str = "") -> None:
        """Delete a file or a folder tree; nothing if it is not there."""
        fs, target = self.filesystem, self._p(name)
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(target)
        elif info.type == pafs.FileType.File:
            fs.delete_file(target)

    def __str__(self) -> str:
        return self.uri
