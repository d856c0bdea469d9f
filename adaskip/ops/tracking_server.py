"""An MLflow tracking server for a cluster or a laptop: PostgreSQL backend store, proxied artifacts.

    python -m adaskip.ops.tracking_server [--state .mlflow-server] [--host 127.0.0.1] [--port 5000]

Runs in the foreground. PostgreSQL keeps its data in STATE/pg and listens only on a unix socket in that folder
(no TCP port); ``mlflow server --serve-artifacts`` keeps artifacts in STATE/artifacts (or --artifacts), so
clients need nothing but HTTP to the server. A host other than loopback requires MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD in the environment: they become the admin of MLflow's basic-auth app (its ini and user
database in STATE/auth, mode 0700; the password is passed in the environment, never written), and HTTPS
beyond loopback: --certfile/--keyfile, or --self-signed (a pair made for this machine's names in STATE/tls), or
plain HTTP only when told --insecure (the password would cross the network in clear). Prints
``MLFLOW_TRACKING_URI=https://HOST:PORT`` (then, for a self-signed pair, ``MLFLOW_TRACKING_SERVER_CERT_PATH=...``,
what clients verify it with) once the server answers; SIGTERM/SIGINT stop MLflow, then PostgreSQL. Re-running with
the same state folder reuses its data.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import ipaddress
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from ..errors import AdaskipError

if TYPE_CHECKING:  # cryptography is imported where a certificate is made
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.x509 import Certificate, GeneralName

DATABASE = "mlflow"
PG_USER = "postgres"  # the database superuser (initdb -U), and the OS user PostgreSQL runs as under root
PG_INSTALL_HINT = "apt-get update && apt-get install -y postgresql-15"
USER_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
# MLflow's default allowed Host headers besides loopback, kept for wildcard binds (0.0.0.0, ::).
PRIVATE_HOSTS = ["10.*", "192.168.*", *(f"172.{i}.*" for i in range(16, 32)), "fc00:*", "fd00:*"]
START_TIMEOUT_S, STOP_TIMEOUT_S = 180.0, 30.0


class ServerError(AdaskipError):
    """The tracking server cannot be set up or started."""


class _Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m adaskip.ops.tracking_server",
        description=__doc__.split("\n\n")[0],
        epilog="Clients set MLFLOW_TRACKING_URI=https://HOST:PORT (plus MLFLOW_TRACKING_USERNAME/PASSWORD when the "
        "server authenticates, and MLFLOW_TRACKING_SERVER_CERT_PATH for a certificate their system does not "
        "trust). A host other than loopback (also 0.0.0.0) requires those two variables in this command's "
        "environment: they become the basic-auth admin the first time the state folder is used (later "
        "changes of the password go through MLflow's update-password API), and TLS (or --insecure).",
    )
    p.add_argument(
        "--state",
        type=Path,
        default=Path(".mlflow-server"),
        help="folder for PostgreSQL's data (pg/), artifacts and auth files; reused when it exists "
        "(default: %(default)s)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP server listens on (default: %(default)s)")
    p.add_argument("--port", type=int, default=5000, help="HTTP port (default: %(default)s)")
    p.add_argument(
        "--artifacts",
        default=None,
        help="where the server stores artifacts: a folder or a URI like s3://bucket/path (default: STATE/artifacts)",
    )
    p.add_argument(
        "--pg-port",
        type=int,
        default=5432,
        help="PostgreSQL's port number; it only names its unix socket (STATE/pg/.s.PGSQL.N), "
        "no TCP port is opened (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=4, help="uvicorn worker processes of the MLflow server (default: %(default)s)"
    )
    p.add_argument(
        "--allowed-hosts",
        default="",
        help="extra comma-separated Host header values clients may use (DNS names of this machine) "
        "for a non-loopback host; the host address and this machine's name are allowed anyway",
    )
    tls = p.add_argument_group("TLS (required beyond loopback unless --insecure)")
    tls.add_argument("--certfile", type=Path, help="serve HTTPS with this certificate chain (PEM; with --keyfile)")
    tls.add_argument("--keyfile", type=Path, help="the certificate's private key (PEM)")
    tls.add_argument(
        "--self-signed",
        action="store_true",
        help="serve HTTPS with a self-signed certificate for this machine's names and --allowed-hosts, "
        "made once in STATE/tls; clients set MLFLOW_TRACKING_SERVER_CERT_PATH=STATE/tls/server.crt",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="serve plain HTTP beyond loopback: the password crosses the network in clear (a network "
        "only you use, or TLS terminated in front of this server)",
    )
    return p.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: treated as reachable from elsewhere
        return False


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def url_host(host: str) -> str:
    """``[::1]`` for an IPv6 address (URLs, Host headers), the host itself otherwise."""
    return f"[{host}]" if ":" in host else host


def credentials(host: str) -> Optional[tuple[str, str]]:
    """The admin credentials a non-loopback server requires; None on loopback."""
    if is_loopback(host):
        return None
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if not user or not password or not user.isprintable():
        raise ServerError(
            f"--host {host} is not a loopback address: set {USER_ENV} and {PASSWORD_ENV} (the "
            "basic-auth admin; MLflow wants a password of 12 or more characters) in the environment"
        )
    return user, password


def tls_pair(args: argparse.Namespace, state: Path) -> Optional[tuple[Path, Path]]:
    """The certificate and key to serve HTTPS with, or None for plain HTTP (loopback, or --insecure)."""
    if bool(args.certfile) != bool(args.keyfile):
        raise ServerError("--certfile and --keyfile go together (the certificate chain and its private key)")
    if args.certfile and args.self_signed:
        raise ServerError("--self-signed makes its own pair: give it or --certfile/--keyfile, not both")
    if args.certfile:
        for f in (args.certfile, args.keyfile):
            if not f.is_file():
                raise ServerError(f"{f}: no such file")
        return args.certfile.resolve(), args.keyfile.resolve()
    if args.self_signed:
        names = ["localhost", "127.0.0.1", *public_names(args.host, args.allowed_hosts)]
        if is_wildcard(args.host):  # clients may come by any address of this machine
            names += socket.gethostbyname_ex(socket.gethostname())[2]
        return self_signed_pair(state / "tls", names)
    if not is_loopback(args.host) and not args.insecure:
        raise ServerError(
            f"--host {args.host} is not a loopback address: serve HTTPS (--certfile/--keyfile, or "
            "--self-signed for a lab cluster), or pass --insecure to send the password in clear"
        )
    return None


def self_signed_pair(folder: Path, names: list[str]) -> tuple[Path, Path]:
    """STATE/tls/server.{crt,key}: a self-signed certificate (its own CA) for ``names``, made once and reused while
    it covers them (a new name makes a new pair; clients then need the new certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert, key = folder / "server.crt", folder / "server.key"
    sans = [
        x509.IPAddress(ipaddress.ip_address(n.strip("[]"))) if _is_ip(n) else x509.DNSName(n)
        for n in dict.fromkeys(names)
        if n
    ]
    if cert.is_file() and key.is_file():
        have = (
            x509.load_pem_x509_certificate(cert.read_bytes())
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
        if set(sans) <= set(have):
            return cert, key
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    write_private(
        key,
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )
    cert.write_bytes(_certificate(private, sans).public_bytes(serialization.Encoding.PEM))
    return cert, key


def _certificate(private: EllipticCurvePrivateKey, sans: list[GeneralName]) -> Certificate:
    """A self-signed CA certificate of ``private``'s key for the subject alternative names ``sans``, for serving."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"adaskip tracking server {socket.gethostname()}")])
    now = datetime.now(timezone.utc)
    public = private.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(private, hashes.SHA256())
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (mode 0600, also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def lock_state(state: Path) -> int:
    """Hold STATE/server.lock while serving (released when this process ends, however): a second server on the
    same state folder is refused, and a PostgreSQL found running there is a leftover of a killed one."""
    fd = os.open(state / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ServerError(f"another tracking server is running on the state folder {state}") from None
    return fd


def pg_bindir(data: Path) -> Path:
    """PostgreSQL's server binaries: those of the data folder's major version, else pg_ctl on PATH, else the
    newest under /usr/lib/postgresql (Debian's layout)."""
    version = data / "PG_VERSION"
    if version.exists() and (known := Path(f"/usr/lib/postgresql/{version.read_text().strip()}/bin")).is_dir():
        return known
    if on_path := shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    if not debian:
        raise ServerError(f"PostgreSQL's server (initdb, pg_ctl) is not installed; on Debian/Ubuntu: {PG_INSTALL_HINT}")
    return debian[-1].parent


def pg_os_user() -> Optional[pwd.struct_passwd]:
    """The OS user PostgreSQL runs as: `postgres` under root (PostgreSQL refuses root), else the caller."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServerError(
            f"running as root, PostgreSQL needs an unprivileged OS user `{PG_USER}`; "
            f"installing PostgreSQL creates it: {PG_INSTALL_HINT}"
        ) from None


@dataclass
class Postgres:
    """A private PostgreSQL cluster in ``dir`` (data in dir/data, socket and log in dir)."""

    dir: Path
    port: int
    user: Optional[pwd.struct_passwd]

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def as_user(self, *argv: str) -> subprocess.CompletedProcess:
        """Run ``argv`` as the PostgreSQL user, in its own session (a terminal's Ctrl-C is ours to handle)."""
        prefix = ["runuser", "-u", self.user.pw_name, "--"] if self.user else []
        return subprocess.run([*prefix, *argv], cwd=self.dir, capture_output=True, text=True, start_new_session=True)

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """One of PostgreSQL's binaries (initdb, pg_ctl)."""
        done = self.as_user(str(pg_bindir(self.data) / tool), *args)
        if check and done.returncode != 0:
            raise ServerError(
                f"{tool} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-800:]} (log: {self.dir / 'log'})"
            )
        return done

    def prepare(self) -> None:
        """Create dir for the PostgreSQL user (0700) and check that user can reach it."""
        socket_path = self.dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > 107:
            raise ServerError(
                f"the socket path {socket_path} is longer than a unix socket allows (107 bytes): use a shorter --state"
            )
        self.dir.mkdir(mode=0o700, exist_ok=True)
        if self.user:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
            os.chmod(self.dir.parent, os.stat(self.dir.parent).st_mode | 0o001)  # let it pass through the state dir
            if self.as_user("test", "-w", str(self.dir)).returncode != 0:
                raise ServerError(
                    f"the OS user {self.user.pw_name} cannot reach {self.dir}: every folder above it "
                    "needs search permission for it (chmod o+x), or choose another --state"
                )

    def initdb(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--locale=C")

    def start(self) -> None:
        """Start the server (restarting one a killed run left behind), on the unix socket only."""
        if self.run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0:
            self.stop()
        opts = f"-k {shlex.quote(str(self.dir))} -p {self.port} -c listen_addresses=''"
        self.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts)

    def stop(self) -> None:
        if self.data.exists():
            self.run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data), check=False)

    def uri(self, database: str) -> str:
        # +psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3), which is not installed
        return f"postgresql+psycopg2://{PG_USER}@/{database}?host={self.dir.resolve()}&port={self.port}"

    def ensure_database(self, name: str) -> None:
        try:
            import psycopg2
        except ImportError:
            raise ServerError(
                "the PostgreSQL driver psycopg2 is missing: make install (requirements.lock pins psycopg2-binary)"
            ) from None
        conn = psycopg2.connect(host=str(self.dir.resolve()), port=self.port, user=PG_USER, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()


def auth_env(state: Path, user: str, password: str) -> dict[str, str]:
    """Write the basic-auth ini (0600, no password in it) and return the environment the server needs."""
    auth = state / "auth"
    auth.mkdir(mode=0o700, exist_ok=True)
    os.chmod(auth, 0o700)
    ini = auth / "basic_auth.ini"
    write_private(
        ini,
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{(auth / 'basic_auth.db').resolve()}\n"
        f"admin_username = {user.replace('%', '%%')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    key_file = auth / "secret_key"
    if not key_file.exists():
        write_private(key_file, secrets.token_hex(32))
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini.resolve()),
        "MLFLOW_AUTH_ADMIN_USERNAME": user,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or key_file.read_text().strip(),
    }


def public_names(host: str, extra: str) -> list[str]:
    """The names clients may reach a non-loopback server by: its address, this machine's names, ``extra``."""
    names = [] if is_wildcard(host) else [url_host(host)]
    names += [socket.gethostname(), socket.getfqdn()] + [n.strip() for n in extra.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def security_args(host: str, port: int, extra: str) -> list[str]:
    """MLflow 3's security middleware accepts only loopback and private-range Host headers and blocks
    cross-origin writes by default: allow this server's own names, so clients and its UI reach it."""
    if is_loopback(host):
        return []
    names = public_names(host, extra)
    hosts = [h for n in ["localhost", "127.0.0.1", "[::1]", *names] for h in (n, f"{n}:{port}")]
    hosts += PRIVATE_HOSTS if is_wildcard(host) else []
    origins = [f"{scheme}://{n}:{port}" for n in names for scheme in ("https", "http")]
    return ["--allowed-hosts", ",".join(hosts), "--cors-allowed-origins", ",".join(origins)]


def artifacts_destination(state: Path, given: Optional[str]) -> str:
    if given and "://" in given:
        return given
    dest = Path(given) if given else state / "artifacts"
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    return str(dest.resolve())


def mlflow_command(
    args: argparse.Namespace, backend: str, artifacts: str, auth: bool, tls: Optional[tuple[Path, Path]] = None
) -> list[str]:
    uvicorn = (
        ["--uvicorn-opts", shlex.join(["--ssl-certfile", str(tls[0]), "--ssl-keyfile", str(tls[1])])] if tls else []
    )
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
        *(["--app-name", "basic-auth"] if auth else []),
        *security_args(args.host, args.port, args.allowed_hosts),
        *uvicorn,
    ]


def _die_with_parent() -> None:
    """In the MLflow child: get SIGTERM when this process dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_mlflow(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """MLflow in its own session (stopped by us, not by a terminal's Ctrl-C); its stdout goes to our stderr,
    so that our stdout holds the one ready line. MLflow's job execution (GenAI evaluation jobs: 7 more processes
    and a folder in /dev/shm it leaves behind) stays off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise."""
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **env}
    return subprocess.Popen(cmd, env=env, stdout=sys.stderr, start_new_session=True, preexec_fn=_die_with_parent)


def local_url(host: str, port: int, tls: bool = False) -> str:
    """Where this machine reaches the server."""
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"{'https' if tls else 'http'}://{url_host(probe)}:{port}"


# this process probing its own server on this machine: the certificate need not name the address it probes
_OWN = ssl._create_unverified_context()  # noqa: S323


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"mlflow server exited (code {proc.returncode}) before answering; see its output above")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2, context=_OWN):  # noqa: S310 (our own server)
                return
        except OSError:
            time.sleep(0.5)
    raise ServerError(f"mlflow server did not answer {url}/health within {timeout:.0f} s")


def check_login(url: str, user: str, password: str) -> None:
    """Warn when the admin's stored password is not the one in the environment: MLflow sets it at the first
    start only."""
    token = b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Authorization": f"Basic {token}"}
    )
    try:
        urllib.request.urlopen(req, timeout=10, context=_OWN).close()  # noqa: S310 (our own server)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            print(
                f"warning: the server refuses {USER_ENV}/{PASSWORD_ENV}: the admin password was set when the "
                "state folder was first used; change it with MLflow's update-password API",
                file=sys.stderr,
            )
    except OSError:
        pass  # not this check's business


def stop_mlflow(proc: Optional[subprocess.Popen]) -> None:
    """SIGTERM (MLflow forwards it to uvicorn, which drains its workers), SIGKILL to the group after a while."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of its process group
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def serve(args: argparse.Namespace) -> int:
    """Start PostgreSQL and MLflow, wait for a signal (or MLflow's exit), stop both."""
    creds = credentials(args.host)
    state = args.state.resolve()
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_state(state)
    tls = tls_pair(args, state)
    pg = Postgres(state / "pg", args.pg_port, pg_os_user())
    proc: Optional[subprocess.Popen] = None
    try:
        pg.prepare()
        pg.initdb()
        pg.start()
        pg.ensure_database(DATABASE)
        env = auth_env(state, *creds) if creds else {}
        cmd = mlflow_command(args, pg.uri(DATABASE), artifacts_destination(state, args.artifacts), bool(creds), tls)
        proc = start_mlflow(cmd, env)
        wait_ready(proc, local_url(args.host, args.port, bool(tls)))
        if creds:
            check_login(local_url(args.host, args.port, bool(tls)), *creds)
        shown = socket.getfqdn() if is_wildcard(args.host) else url_host(args.host)
        print(f"MLFLOW_TRACKING_URI={'https' if tls else 'http'}://{shown}:{args.port}", flush=True)
        if tls and args.self_signed:
            print(f"MLFLOW_TRACKING_SERVER_CERT_PATH={tls[0]}", flush=True)
        code = proc.wait()
        print(f"error: mlflow server exited (code {code})", file=sys.stderr)
        return code or 1
    except _Stop:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_mlflow(proc)
        pg.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        return serve(args)
    except _Stop:
        return 0
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
