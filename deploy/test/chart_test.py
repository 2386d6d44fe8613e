#!/usr/bin/env python3
"""Checks the Helm chart, the plain manifests rendered from it, and the configs it writes.

    chart_test.py render                 rewrite deploy/kubernetes/damselfly.yaml
    chart_test.py check --bin-dir DIR    every check below (scripts/test-deploy.sh runs it)

`check`, for the default values and each values file in deploy/helm/damselfly/ci/:
  * `helm lint --strict` (Helm's Go SDK through helm-python-sdk, no cluster);
  * renders the chart offline and validates every object against the Kubernetes schemas
    (kubernetes-validate, strict: unknown fields are errors) for the oldest Kubernetes the
    chart supports and the newest the package knows; a ServiceMonitor against the Prometheus
    Operator's models;
  * extracts the daemons' config files from the ConfigMaps and starts the real `supernode`
    and `dfdaemon` with them, with the arguments the pods use, until `/healthy` answers; runs
    the init container's `dfdaemon init containerd` into a temporary hosts directory;
  * checks what the chart promises: several supernodes listed alike for the dfdaemons and the
    supernodes' preheat placement, the token only through the Secret, probes on /healthy;
and that deploy/kubernetes/ is exactly the default render, and that values the chart refuses
are refused with a clear message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml
from cloudcoil.models.prometheus_operator import v1 as prometheus_v1

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "damselfly"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MANIFESTS = ROOT / "deploy" / "kubernetes" / "damselfly.yaml"
RELEASE = "damselfly"
NAMESPACE = "damselfly"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]

MANIFEST_HEADER = f"""\
# Damselfly for Kubernetes without Helm: the chart deploy/helm/damselfly rendered with its
# default values (release "{RELEASE}", namespace "{NAMESPACE}") by scripts/render-manifests.sh.
# Do not edit by hand: change the chart, rerun the script (CI checks the two agree).
#   kubectl apply -f deploy/kubernetes/damselfly.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
"""


def render(values: dict | None) -> dict[str, str]:
    """Template path -> rendered text, NOTES.txt and empty documents left out."""
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {
        path: text
        for path, text in sorted(out.items())
        if not path.endswith("NOTES.txt") and text.strip()
    }


def manifest_text(rendered: dict[str, str]) -> str:
    parts = [MANIFEST_HEADER]
    for path, text in rendered.items():
        for doc in re.split(r"(?m)^---\s*$", text):
            if doc.strip():
                parts.append(f"---\n# Source: {path}\n{doc.strip()}\n")
    return "".join(parts)


def objects(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for text in rendered.values():
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict], kind: str, suffix: str = "") -> list[dict]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]


class Checks:
    """Runs named checks, keeps going after a failure, and reports them all at the end."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def run(self, name: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # every failure is reported, none stops the others
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            print(f"FAIL {name}: {detail}", flush=True)
            self.failed.append(name)
        else:
            print(f"ok   {name}", flush=True)
            self.passed += 1


# ---- lint and schemas ---------------------------------------------------------------------


def lint(values: dict | None) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, f"helm lint: {problems}"


def validate_objects(docs: list[dict]) -> None:
    assert docs, "nothing rendered"
    for doc in docs:
        meta = doc["metadata"]
        name = f"{doc['kind']}/{meta['name']}"
        if doc["kind"] != "Namespace":
            assert meta.get("namespace") == NAMESPACE, f"{name} has no namespace"
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_service_monitor(doc)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                raise AssertionError(f"{name} (Kubernetes {version}) at {path}: {e.message}")


def validate_service_monitor(doc: dict) -> None:
    """The models accept unknown keys silently; a key they dropped is one they do not know."""
    model = prometheus_v1.ServiceMonitor.model_validate(doc)
    back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = sorted(diff_keys(doc, back))
    assert not unknown, f"ServiceMonitor/{doc['metadata']['name']}: unknown fields {unknown}"


def diff_keys(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k, v in a.items():
            if k not in b:
                out.append(f"{path}.{k}")
            else:
                out.extend(diff_keys(v, b[k], f"{path}.{k}"))
        return out
    if isinstance(a, list) and isinstance(b, list):
        return [x for i, (u, v) in enumerate(zip(a, b)) for x in diff_keys(u, v, f"{path}[{i}]")]
    return []


# ---- what the chart promises ----------------------------------------------------------------


def configs(docs: list[dict]) -> dict[str, str]:
    """File name -> contents of every daemon config and CA bundle the chart renders."""
    out = {}
    for cm in find(docs, "ConfigMap"):
        out.update(cm.get("data", {}))
    return out


def check_promises(values: dict, docs: list[dict]) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        merged = chart.merge_values(values or None)
    v_sn, v_df = merged["supernode"], merged["dfdaemon"]
    files = configs(docs)
    sets = find(docs, "StatefulSet")
    daemons = find(docs, "DaemonSet")
    assert bool(sets) == v_sn["enabled"] and bool(daemons) == v_df["enabled"]
    sn_addrs = None
    if v_sn["enabled"]:
        (sts,) = sets
        assert sts["spec"]["replicas"] == v_sn["replicas"]
        pod = sts["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        check_probes(c)
        sn = tomllib.loads(files["supernode.toml"])
        assert "token" not in sn.get("preheat", {}), "the preheat token must not be in a ConfigMap"
        env = {e["name"]: e for e in c.get("env", [])}
        token = merged["preheat"]
        if token.get("token") or token.get("existingSecret"):
            ref = env["DAMSELFLY_PREHEAT_TOKEN"]["valueFrom"]["secretKeyRef"]
            if token.get("existingSecret"):
                assert ref["name"] == token["existingSecret"]
            else:
                (secret,) = [s for s in find(docs, "Secret") if s["metadata"]["name"] == ref["name"]]
                assert secret["stringData"][ref["key"]] == token["token"]
        else:
            assert "DAMSELFLY_PREHEAT_TOKEN" not in env
            assert not [s for s in find(docs, "Secret") if s["metadata"]["name"].endswith("-preheat")]
        assert bool(sts["spec"].get("volumeClaimTemplates")) == v_sn["persistence"]["enabled"]
        # Every CA the supernode is told to trust is a file of a ConfigMap mounted in its pod.
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c["volumeMounts"]}
        for path in sn.get("origin", {}).get("ca_files", []):
            mount = next((m for m in mounts if path.startswith(m + "/")), None)
            assert mount, f"{path} is not under a mounted volume"
            vol = next(v for v in pod["volumes"] if v["name"] == mounts[mount])
            (cm,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == vol["configMap"]["name"]]
            assert path[len(mount) + 1 :] in cm["data"], path
        want_cas = sum(1 for r in v_df.get("registries", []) if r.get("ca"))
        assert len(sn.get("origin", {}).get("ca_files", [])) == want_cas
        sn_addrs = sn.get("preheat", {}).get("supernodes")
    if v_df["enabled"]:
        (ds,) = daemons
        pod = ds["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        (c,) = pod["containers"]
        check_probes(c)
        assert c["resources"]["requests"] and c["resources"]["limits"]
        df = tomllib.loads(files["dfdaemon.toml"])
        want = v_sn["replicas"] if v_sn["enabled"] else 0
        want += len(v_df.get("supernodes", []))
        assert len(df["supernodes"]) == want, df["supernodes"]
        if v_sn["enabled"]:
            # Placement by digest only agrees if both sides list the same supernodes.
            assert (sn_addrs or df["supernodes"]) == df["supernodes"], (sn_addrs, df["supernodes"])
            assert (sn_addrs is None) == (len(df["supernodes"]) == 1)
        cache = [v for v in pod["volumes"] if v["name"] == "cache"][0]
        assert cache["hostPath"]["path"] == v_df["cacheDir"]
        inits = pod.get("initContainers", [])
        assert bool(inits) == v_df["containerd"]["enabled"]
    check_cluster_secret(merged, docs)
    check_signing_key(merged, docs)


CLUSTER_SECRET_FILE = "/etc/damselfly-cluster/secret"
SIGNING_KEY_FILE = "/etc/damselfly-signing/signing.key"


def check_signing_key(merged: dict, docs: list[dict]) -> None:
    """With `supernode.signingKey.existingSecret`, every supernode replica's config names the
    key file and its pod mounts it from that Secret (so the replicas sign alike); without
    it, neither (each replica makes its own key)."""
    sk = merged["supernode"]["signingKey"]
    for sts in find(docs, "StatefulSet"):
        pod = sts["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        conf = tomllib.loads(configs(docs)["supernode.toml"])
        mounted = [m for m in c["volumeMounts"] if m["name"] == "signing-key"]
        volumes = [v for v in pod["volumes"] if v["name"] == "signing-key"]
        if not sk.get("existingSecret"):
            assert "signing_key_file" not in conf.get("cluster", {}) and not mounted and not volumes
            continue
        assert conf["cluster"]["signing_key_file"] == SIGNING_KEY_FILE
        (m,) = mounted
        assert SIGNING_KEY_FILE.startswith(m["mountPath"] + "/") and m["readOnly"]
        (v,) = volumes
        assert v["secret"]["secretName"] == sk["existingSecret"]
        assert v["secret"]["items"] == [{"key": sk["existingSecretKey"], "path": "signing.key"}]


def check_cluster_secret(merged: dict, docs: list[dict]) -> None:
    """With a cluster secret, both daemons' configs name the file, their pods mount it from
    the Secret, and the secret itself is in no ConfigMap; without one, neither."""
    files = configs(docs)
    cs = merged["clusterSecret"]
    on = bool(cs.get("existingSecret") or cs.get("secret"))
    made = [s for s in find(docs, "Secret") if s["metadata"]["name"].endswith("-cluster")]
    if cs.get("secret") and not cs.get("existingSecret"):
        (secret,) = made
        assert secret["stringData"]["secret"] == cs["secret"]
        assert all(cs["secret"] not in text for text in files.values()), "secret in a ConfigMap"
        name, key = secret["metadata"]["name"], "secret"
    else:
        assert not made
        name, key = cs.get("existingSecret"), cs.get("existingSecretKey")
    pods = [(w, "supernode.toml") for w in find(docs, "StatefulSet")]
    pods += [(w, "dfdaemon.toml") for w in find(docs, "DaemonSet")]
    for workload, config in pods:
        pod = workload["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        conf = tomllib.loads(files[config])
        mounted = [m for m in c["volumeMounts"] if m["name"] == "cluster-secret"]
        volumes = [v for v in pod["volumes"] if v["name"] == "cluster-secret"]
        if not on:
            assert "secret_file" not in conf.get("cluster", {}) and not mounted and not volumes, config
            continue
        assert conf["cluster"]["secret_file"] == CLUSTER_SECRET_FILE, config
        (m,) = mounted
        assert CLUSTER_SECRET_FILE.startswith(m["mountPath"] + "/") and m["readOnly"]
        (v,) = volumes
        assert v["secret"]["secretName"] == name
        assert v["secret"]["items"] == [{"key": key, "path": "secret"}]


def check_probes(container: dict) -> None:
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthy", probe


def check_refusals() -> None:
    cases = [
        ({"supernode": {"config": {"listen": "0.0.0.0:1"}}}, "supernode.config.listen"),
        ({"supernode": {"config": {"preheat": {"token": "x"}}}}, "supernode.config.preheat.token"),
        ({"dfdaemon": {"config": {"p2p": {"upload_rate": "1MiB"}}}}, "dfdaemon.config.p2p.upload_rate"),
        (
            {"supernode": {"config": {"cluster": {"secret_file": "/x"}}}},
            "supernode.config.cluster.secret_file",
        ),
        ({"dfdaemon": {"config": {"cluster": {"secret_file": "/x"}}}}, "dfdaemon.config.cluster.secret_file"),
        (
            {"supernode": {"config": {"cluster": {"signing_key_file": "/x"}}}},
            "supernode.config.cluster.signing_key_file",
        ),
        ({"clusterSecret": {"secret": "too short"}}, "at least 16 characters"),
        (
            {"dfdaemon": {"registries": [{"host": "r", "ca": "PEM", "ca_file": "/x"}]}},
            "sets both ca and ca_file",
        ),
    ]
    for values, message in cases:
        try:
            render(values)
        except helm.HelmError as e:
            assert message in str(e), f"{values}: {e}"
        else:
            raise AssertionError(f"{values} rendered; expected a refusal naming {message}")


def check_values_documented() -> None:
    """Every value in values.yaml has a comment right above it, or sits under a documented one
    (e.g. the keys of a `resources` default)."""
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    previous = ""
    missing = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    for n, line in enumerate(lines, 1):
        m = re.match(r"^( *)([A-Za-z0-9_]+):(.*)$", line)
        if m:
            indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.lstrip().startswith("#")
            inherited = any(d for _, d in stack)
            following = next((x for x in lines[n:] if x.strip()), "")
            is_parent = rest == "" and len(following) - len(following.lstrip()) > indent
            if not (documented or inherited or is_parent):
                missing.append(f"line {n}: {key}")
            stack.append((indent, documented))
        if line.strip():
            previous = line
    assert not missing, f"values.yaml values without a comment: {missing}"


def check_manifests_in_sync() -> None:
    want = manifest_text(render(None))
    have = MANIFESTS.read_text() if MANIFESTS.exists() else ""
    assert have == want, (
        f"{MANIFESTS.relative_to(ROOT)} differs from the default render: "
        "run scripts/render-manifests.sh and commit the result"
    )
    validate_objects(list(yaml.safe_load_all(have)))


# ---- the real daemons with the rendered configs -----------------------------------------------


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_udp_port() -> int:
    """A port free for both TCP and UDP: the peer endpoint binds both (TCP pieces, QUIC)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP")


def substitute(args: list[str], mapping: dict[str, str]) -> list[str]:
    return [mapping.get(a, a) for a in args]


@contextlib.contextmanager
def daemon(argv: list[str], log: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAMSELFLY_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> str:
    """Polls /healthy; returns the /metrics text once healthy."""
    deadline = time.monotonic() + 60
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthy", timeout=2) as r:
                if r.status == 200:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as m:
                        return m.read().decode()
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise AssertionError(f"/healthy never answered ({last}):\n{log.read_text()[-3000:]}")


def stop_cleanly(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(20)
    assert code == 0, f"exit {code} after SIGTERM:\n{log.read_text()[-3000:]}"


def run_rendered_daemons(docs: list[dict], bin_dir: Path) -> None:
    files = configs(docs)
    with tempfile.TemporaryDirectory(prefix="damselfly-chart-") as tmp:
        tmp = Path(tmp)
        etc = tmp / "etc"
        (etc / "ca").mkdir(parents=True)
        for name, text in files.items():
            dest = etc / ("ca/" + name if name.endswith(".pem") else name)
            # The pods mount CA bundles at /etc/damselfly/ca (dfdaemon) and /etc/damselfly-ca
            # (supernode); here they live under tmp.
            text = text.replace("/etc/damselfly/ca/", f"{etc}/ca/")
            # The cluster secret is mounted from its Secret; here a file with a test secret.
            text = text.replace(CLUSTER_SECRET_FILE, f"{etc}/cluster-secret")
            # The shared signing key is mounted from its Secret; here one `keygen` made.
            text = text.replace(SIGNING_KEY_FILE, f"{etc}/signing.key")
            dest.write_text(text.replace("/etc/damselfly-ca/", f"{etc}/ca/"))
        (etc / "cluster-secret").write_text("chart-test-cluster-secret-0123456789\n")
        subprocess.run([str(bin_dir / "supernode"), "keygen", str(etc / "signing.key")], check=True)
        for sts in find(docs, "StatefulSet"):
            (c,) = sts["spec"]["template"]["spec"]["containers"]
            port = free_port()
            args = substitute(c["args"], {"/etc/damselfly/supernode.toml": str(etc / "supernode.toml")})
            argv = [str(bin_dir / "supernode"), *args]
            argv += ["--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp / "supernode")]
            log = tmp / "supernode.log"
            with daemon(argv, log) as proc:
                assert "damselfly_supernode_" in wait_healthy(proc, port, log)
                stop_cleanly(proc, log)
        for ds in find(docs, "DaemonSet"):
            pod = ds["spec"]["template"]["spec"]
            mapping = {
                "/etc/damselfly/dfdaemon.toml": str(etc / "dfdaemon.toml"),
                "$(HOST_IP)": "127.0.0.1",
                "$(NODE_NAME)": "chart-test-node",
                "/host/containerd-hosts": str(tmp / "certs.d"),
            }
            port = free_port()
            for init in pod.get("initContainers", []):
                run_init(bin_dir, substitute(init["args"], mapping), tmp / "certs.d", files)
            (c,) = pod["containers"]
            argv = [str(bin_dir / "dfdaemon"), *substitute(c["args"], mapping)]
            argv += ["--listen", f"127.0.0.1:{port}", "--peer-listen", f"127.0.0.1:{free_tcp_udp_port()}"]
            argv += ["--data-dir", str(tmp / "dfdaemon")]
            log = tmp / "dfdaemon.log"
            with daemon(argv, log) as proc:
                assert "damselfly_dfdaemon_" in wait_healthy(proc, port, log)
                stop_cleanly(proc, log)


def run_init(bin_dir: Path, args: list[str], hosts: Path, files: dict[str, str]) -> None:
    """The init container's command, writing into a temporary hosts directory."""
    out = subprocess.run([str(bin_dir / "dfdaemon"), *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"dfdaemon {' '.join(args)}: exit {out.returncode}: {out.stdout}{out.stderr}"
    df = tomllib.loads(files["dfdaemon.toml"])
    selected = [args[i + 1] for i, a in enumerate(args) if a == "--registry"]
    if not selected:
        selected = ["_default", "docker.io"] + [r["host"] for r in df.get("registries", [])]
    written = sorted(p.parent.name for p in hosts.glob("*/hosts.toml"))
    assert written == sorted(set(selected)), (written, selected)
    port = df["listen"].rsplit(":", 1)[1]
    for host in written:
        parsed = tomllib.loads((hosts / host / "hosts.toml").read_text())
        assert f"http://127.0.0.1:{port}" in parsed["host"], parsed
        assert ("server" in parsed) == (host != "_default"), parsed


# ---- entry points ---------------------------------------------------------------------------


def cmd_render() -> int:
    MANIFESTS.parent.mkdir(parents=True, exist_ok=True)
    MANIFESTS.write_text(manifest_text(render(None)))
    print(f"wrote {MANIFESTS.relative_to(ROOT)}")
    return 0


def cmd_check(bin_dir: Path) -> int:
    for name in ("supernode", "dfdaemon"):
        if not os.access(bin_dir / name, os.X_OK):
            print(f"{bin_dir / name} missing: build with cargo build --workspace --all-targets")
            return 1
    print(f"helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {', '.join(KUBE_VERSIONS)}")
    checks = Checks()
    cases = [("default values", {})] + [
        (p.relative_to(ROOT).as_posix(), yaml.safe_load(p.read_text())) for p in CI_VALUES
    ]
    for label, values in cases:
        checks.run(f"helm lint --strict ({label})", lint, values or None)
        try:
            docs = objects(render(values or None))
        except helm.HelmError as e:
            checks.run(f"render ({label})", lambda: (_ for _ in ()).throw(AssertionError(str(e))))
            continue
        checks.run(f"schemas of {len(docs)} objects ({label})", validate_objects, docs)
        checks.run(f"chart promises ({label})", check_promises, values, docs)
        checks.run(f"daemons start with the rendered configs ({label})", run_rendered_daemons, docs, bin_dir)
    checks.run("values.yaml documents every value", check_values_documented)
    checks.run("refused values name the key", check_refusals)
    checks.run("deploy/kubernetes/damselfly.yaml equals the default render", check_manifests_in_sync)
    print(f"deploy: {checks.passed} passed, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("render", help="rewrite deploy/kubernetes/damselfly.yaml")
    check = sub.add_parser("check", help="run every check")
    check.add_argument("--bin-dir", type=Path, required=True, help="directory of the built daemons")
    args = parser.parse_args()
    if args.cmd == "render":
        return cmd_render()
    return cmd_check(args.bin_dir)


if __name__ == "__main__":
    sys.exit(main())
