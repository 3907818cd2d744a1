"""The cluster configurations under cluster/, checked as files: no cluster, no network, seconds.

- One environment: cluster/requirements.lock pins every dependency of the project for one Python
  and platform; the launcher configs and the KubeRay image install from it, into the same base
  image (Python 3.11, CUDA 13.0).
- The locked torch's CUDA build, the Dockerfile's base image and each node image's NVIDIA driver
  agree (NVIDIA's table below).
- Ray's own cluster-launcher validation accepts cluster/aws.yaml and cluster/gcp.yaml; the
  KubeRay manifests fit KubeRay 1.6.0's RayCluster / RayJob API (a hand-written schema) and,
  for their pod templates and the PersistentVolumeClaims, the Kubernetes 1.33 API
  (kubernetes-validate's schemas), unknown fields refused as kubectl does.
- /dev/shm holds each pod's object store; the head offers Ray no CPUs and no memory, runs the
  MLflow tracking server and gives its Ray processes MLFLOW_TRACKING_URI and
  RAY_JOB_STOP_WAIT_TIME_S, which no worker gets; GCP's Spot comment uncomments to a valid block.

Every check is a function returning the problems it finds, and each is also run on a broken
input (the files as they were before, or a mutated copy) to show it can fail.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LOCK = CLUSTER / "requirements.lock"
DOCKERFILE = CLUSTER / "kuberay" / "Dockerfile"
DATA = Path(__file__).resolve().parent / "data"
# The configurations as they were before these checks existed (see test_*_original_*).
ORIGINALS = DATA / "cluster_configs"
# RayCluster and RayJob as KubeRay v1.6.0, the oldest release the manifests support, defines
# them: a hand-written subset of its API (tests/data/kuberay/README.md), closed, so that a field
# it does not list fails.
KUBERAY_SCHEMA = DATA / "kuberay" / "kuberay-v1.6.0-subset.schema.json"
# The Kubernetes release whose API the pod templates and the PVCs must fit, in
# kubernetes-validate's bundled schemas: a field added after it fails.
KUBERNETES = "1.33"
# The fields of autoscalerOptions that override the autoscaler container's own.
AUTOSCALER_CONTAINER = (
    "image",
    "imagePullPolicy",
    "resources",
    "securityContext",
    "env",
    "envFrom",
    "volumeMounts",
)
LAUNCHER_CONFIGS = ("aws.yaml", "gcp.yaml")
KUBERAY_MANIFESTS = ("raycluster.yaml", "rayjob.yaml")
PVCS = {"shared-pvc.yaml": "ReadWriteMany", "mlflow-pvc.yaml": "ReadWriteOnce"}
MLFLOW_CLAIM = "abaw-mlflow"

# What the head's Ray processes (the job agent, every job's driver) get, and no worker does.
HEAD_ENV = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "RAY_JOB_STOP_WAIT_TIME_S": "60"}

# The NVIDIA Linux x86_64 driver each CUDA toolkit needs: NVIDIA's CUDA Toolkit Release Notes,
# table "CUDA Toolkit and Corresponding Driver Versions" (GA releases; 13.0 GA: 580.65.06,
# 12.8 GA: 570.26). NVIDIA's CUDA Compatibility guide adds minor-version compatibility: a 12.x
# build also runs on >= 525, a 13.x build on >= 580, without PTX JIT of newer code and without
# some newer APIs; this check asks for the toolkit's own driver, which needs no such caveat.
CUDA_MIN_DRIVER = {
    (11, 8): 520,
    (12, 0): 525,
    (12, 1): 530,
    (12, 2): 535,
    (12, 3): 545,
    (12, 4): 550,
    (12, 5): 555,
    (12, 6): 560,
    (12, 8): 570,
    (12, 9): 575,
    (13, 0): 580,
}
# Ray's images tag a CUDA build -cuXY; their "-gpu" tag aliases CUDA 12.1 (gpu_platform
# "cu12.1.1-cudnn8" in ray-project/ray's ray-images.json).
RAY_GPU_TAG_CUDA = (12, 1)


def _cuda(cuda: tuple[int, int]) -> str:
    return f"{cuda[0]}.{cuda[1]}"


def min_driver(cuda: tuple[int, int]) -> int:
    assert cuda in CUDA_MIN_DRIVER, f"CUDA {_cuda(cuda)}: add its driver to CUDA_MIN_DRIVER"
    return CUDA_MIN_DRIVER[cuda]


# --------------------------------------------------------------------------- the lock


def locked(lock_text: str) -> dict[str, str]:
    """Package (canonical name) -> the exact version the lock pins."""
    pins = {}
    for line in lock_text.splitlines():
        found = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$", line)
        if found:
            pins[canonicalize_name(found[1])] = found[2]
    return pins


def lock_python(lock_text: str) -> str:
    return re.search(r"--python-version (\d+\.\d+)", lock_text)[1]


def torch_cuda(pins: dict[str, str]) -> tuple[int, int]:
    """The CUDA the locked torch wheels are built for, read from the CUDA runtime they pull in
    (nvidia-cuda-runtime 13.0.x for CUDA 13 wheels, nvidia-cuda-runtime-cu12 12.8.x for cu128)."""
    runtime = [v for n, v in pins.items() if re.fullmatch(r"nvidia-cuda-runtime(-cu\d+)?", n)]
    assert len(runtime) == 1, "the lock has no CUDA build of torch (no nvidia-cuda-runtime)"
    major, minor = (int(x) for x in runtime[0].split(".")[:2])
    suffixed = {n: int(m[1]) for n in pins if (m := re.fullmatch(r"nvidia-.*-cu(\d+)", n))}
    assert all(v == major for v in suffixed.values()), f"CUDA {major} torch, but {suffixed}"
    return major, minor


def test_the_lock_pins_every_dependency_for_one_python_and_platform():
    text = LOCK.read_text()
    pins = locked(text)
    entries = [ln for ln in text.splitlines() if ln and not ln.lstrip().startswith("#")]
    assert entries and all(re.fullmatch(r"\S+==\S+", ln) for ln in entries), "exact pins only"
    assert lock_python(text) == "3.11" and "--python-platform x86_64-manylinux" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dependency in [*project["dependencies"], "ray[default,data,train,tune]==2.60.0"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not locked: run the command at the top of {LOCK.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} in the lock, {dependency} in pyproject.toml: relock"
        )
    assert (pins["ray"], pins["torch"], pins["torchvision"]) == ("2.60.0", "2.14.1", "0.29.1")
    assert torch_cuda(pins) == (13, 0)


# --------------------------------------------------------------------------- CUDA and drivers


def dockerfile_base_image(dockerfile_text: str) -> str:
    return re.search(r"^ARG RAY_IMAGE=(\S+)", dockerfile_text, re.M)[1]


def image_cuda(image: str) -> tuple[int, int] | None:
    tag = image.rsplit(":", 1)[-1]
    if found := re.search(r"-cu(\d+)(\d)$", tag):  # cu130 -> 13.0, cu128 -> 12.8
        return int(found[1]), int(found[2])
    return RAY_GPU_TAG_CUDA if tag.endswith("-gpu") else None


def image_drivers(config_text: str) -> dict[str, int | None]:
    """Node type -> the NVIDIA driver of its machine image. A GCP Deep Learning VM family name
    ends in nvidia-<driver>; an AMI id says nothing, so aws.yaml states its one AMI's driver in
    a comment line `# image-nvidia-driver: <driver>`."""
    config = yaml.safe_load(config_text)
    stated = re.findall(r"^\s*#\s*image-nvidia-driver:\s*(\d+)\s*$", config_text, re.M)
    amis = {t["node_config"].get("ImageId") for t in config["available_node_types"].values()}
    drivers = {}
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        if "ImageId" in node:
            one = len(stated) == 1 and len(amis) == 1
            drivers[name] = int(stated[0]) if one else None
        else:
            boot = [d["initializeParams"]["sourceImage"] for d in node["disks"] if d.get("boot")]
            found = re.search(r"nvidia-(\d+)(-v\d+)?$", boot[0]) if boot else None
            drivers[name] = int(found[1]) if found else None
    return drivers


def cuda_driver_problems(lock: str, dockerfile: str, launchers: dict[str, str]) -> list[str]:
    """Where the locked torch's CUDA, the Dockerfile's base image and the node images' NVIDIA
    drivers disagree."""
    pins = locked(lock)
    cuda = torch_cuda(pins)
    torch = f"torch {pins['torch']} (CUDA {_cuda(cuda)})"
    needed = min_driver(cuda)
    problems = []
    base = dockerfile_base_image(dockerfile)
    base_cuda = image_cuda(base)
    if base_cuda is None or base_cuda[0] != cuda[0]:
        found = "no CUDA" if base_cuda is None else f"CUDA {_cuda(base_cuda)}"
        problems.append(f"Dockerfile: base image {base} has {found}, the lock {torch}")
    else:
        needed = max(needed, min_driver(base_cuda))
    for name, text in launchers.items():
        for node_type, driver in image_drivers(text).items():
            if driver is None:
                problems.append(f"{name} {node_type}: the image's NVIDIA driver is not stated")
            elif driver < needed:
                problems.append(
                    f"{name} {node_type}: NVIDIA driver {driver} < {needed}, which {torch} needs"
                )
        guard = re.findall(r'"\$\{DRIVER%%\.\*\}" -ge (\d+)', text)
        if guard != [str(needed)]:
            problems.append(f"{name}: the GPU nodes' driver guard asks for {guard}, not {needed}")
    return problems


def _launcher_texts() -> dict[str, str]:
    return {name: (CLUSTER / name).read_text() for name in LAUNCHER_CONFIGS}


def test_node_images_and_base_image_match_the_cuda_of_the_locked_torch():
    problems = cuda_driver_problems(LOCK.read_text(), DOCKERFILE.read_text(), _launcher_texts())
    assert problems == []
    drivers = {n: image_drivers(t) for n, t in _launcher_texts().items()}
    assert drivers == {n: {"head_cpu": 580, "worker_gpu": 580} for n in LAUNCHER_CONFIGS}


def test_the_driver_check_rejects_the_original_gcp_image_and_dockerfile():
    """gcp.yaml booted a driver-570 family and the Dockerfile built on "-gpu" (CUDA 12.1):
    neither can run torch 2.14.1, built for CUDA 13.0."""
    problems = cuda_driver_problems(
        LOCK.read_text(),
        (ORIGINALS / "Dockerfile.orig").read_text(),
        {"gcp.yaml": (ORIGINALS / "gcp.orig.yaml").read_text()},
    )
    assert (
        "gcp.yaml worker_gpu: NVIDIA driver 570 < 580, which torch 2.14.1 (CUDA 13.0) needs"
        in problems
    ), problems
    assert any("py311-gpu has CUDA 12.1" in p for p in problems), problems


def test_the_driver_check_follows_the_lock_and_the_stated_driver():
    lock, dockerfile, launchers = LOCK.read_text(), DOCKERFILE.read_text(), _launcher_texts()
    # An AMI stated at 570, or not stated at all, is refused.
    aws = launchers["aws.yaml"]
    at_570 = aws.replace("# image-nvidia-driver: 580", "# image-nvidia-driver: 570")
    unstated = aws.replace("# image-nvidia-driver: 580", "#")
    assert at_570 != aws and unstated != aws
    problems = cuda_driver_problems(lock, dockerfile, {"aws.yaml": at_570})
    assert "aws.yaml worker_gpu: NVIDIA driver 570 < 580, which torch 2.14.1 (CUDA 13.0) needs" in (
        problems
    )
    problems = cuda_driver_problems(lock, dockerfile, {"aws.yaml": unstated})
    assert "aws.yaml worker_gpu: the image's NVIDIA driver is not stated" in problems
    # A lock of cu128 wheels needs driver 570 only: the check reads the lock, not a constant.
    cu128 = re.sub(
        r"^nvidia-cuda-runtime==.*$", "nvidia-cuda-runtime-cu12==12.8.90", lock, flags=re.M
    )
    cu128 = re.sub(r"^(nvidia-\S+)-cu13==", r"\1-cu12==", cu128, flags=re.M)
    original = {"gcp.yaml": (ORIGINALS / "gcp.orig.yaml").read_text()}
    problems = cuda_driver_problems(cu128, dockerfile.replace("cu130", "cu128"), original)
    assert problems == ["gcp.yaml: the GPU nodes' driver guard asks for [], not 570"]


# --------------------------------------------------------------------------- one environment


def _commands(config: dict) -> dict[str, list[str]]:
    keys = [k for k in config if k.endswith("_commands")]
    return {k: config[k] for k in keys}


def _from_the_lock(words: list[str], lock: str) -> bool:
    """A `pip install` that installs the lock, or the project without its dependencies, or
    exact pins under the lock as constraints."""
    if _option(words, "-r") == lock or ("--no-deps" in words and "-e" in words):
        return True
    packages = [w for w in words[2:] if not w.startswith("-")]
    packages = [p for p in packages if words[words.index(p) - 1] not in ("-c", "-r")]
    return _option(words, "-c") == lock and all("==" in p for p in packages)


def environment_problems(lock: str, dockerfile: str, launchers: dict[str, str]) -> list[str]:
    """Where a node would not run the locked environment in the Dockerfile's base image."""
    pins = locked(lock)
    base = dockerfile_base_image(dockerfile)
    problems = []
    tag = base.rsplit(":", 1)[-1]
    expected = f"{pins['ray']}-py{lock_python(lock).replace('.', '')}-"
    if not tag.startswith(expected):
        problems.append(f"Dockerfile: base image {base} is not {expected}... (Ray, Python)")
    runs = re.findall(r"^RUN (.*)", dockerfile.replace("\\\n", " "), re.M)  # lines joined
    installs = [i for run in runs for i in re.findall(r"pip install[^&;]*", run)]
    if not any("-r cluster/requirements.lock" in i for i in installs):
        problems.append("Dockerfile: does not install cluster/requirements.lock")
    for install in installs:
        if not _from_the_lock(shlex.split(install), "cluster/requirements.lock"):
            problems.append(f"Dockerfile: `{install.strip()}` resolves beyond the lock")
    for name, text in launchers.items():
        config = yaml.safe_load(text)
        image = config.get("docker", {}).get("image")
        if image != base:
            problems.append(f"{name}: Ray runs in {image}, not the Dockerfile's base image {base}")
        commands = " ; ".join(c for cs in _commands(config).values() for c in cs)
        installs = re.findall(r"pip install[^&;|]*", commands)
        if not any("-r ~/abaw-ray/cluster/requirements.lock" in i for i in installs):
            problems.append(f"{name}: does not install cluster/requirements.lock")
        for install in installs:
            if not _from_the_lock(shlex.split(install), "~/abaw-ray/cluster/requirements.lock"):
                problems.append(f"{name}: `{install.strip()}` resolves beyond the lock")
    for name in KUBERAY_MANIFESTS:
        for image in re.findall(r"image: (\S+)", (CLUSTER / "kuberay" / name).read_text()):
            if not image.endswith(f"-ray{tag}"):
                problems.append(f"{name}: image {image} is not tagged for the base image {tag}")
    return problems


def test_every_node_runs_the_locked_environment_in_one_image():
    assert environment_problems(LOCK.read_text(), DOCKERFILE.read_text(), _launcher_texts()) == []


def test_the_environment_check_rejects_the_original_gcp_yaml_and_dockerfile():
    problems = environment_problems(
        LOCK.read_text(),
        (ORIGINALS / "Dockerfile.orig").read_text(),
        {"gcp.yaml": (ORIGINALS / "gcp.orig.yaml").read_text()},
    )
    assert "Dockerfile: does not install cluster/requirements.lock" in problems, problems
    assert any(p.startswith("gcp.yaml: Ray runs in None") for p in problems), problems
    assert any("resolves beyond the lock" in p and "ray[default" in p for p in problems)


# --------------------------------------------------------------------------- Ray's validation


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a config before anything starts (as Ray's own tests of its example
    configs do): fill in the provider's defaults, then check against Ray's JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _launcher(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_configs_pass_rays_own_validation(name):
    prepared = ray_validate(_launcher(name))  # as shipped, placeholders and all
    assert prepared["head_node_type"] == "head_cpu"


# Every file under cluster/, and the checks of this module that read it: a file added there
# fails the test below until a check reads it.
CHECKED = {
    "aws.yaml": "Ray's prepare_config/validate_config; the lock, image and driver checks",
    "gcp.yaml": "Ray's prepare_config/validate_config; the lock, image and driver checks",
    "fake_multinode.yaml": "Ray's schema; tests/test_cluster.py runs it",
    "requirements.lock": "the lock's pins against pyproject.toml, the images and the drivers",
    "kuberay/Dockerfile": "its base image, Python and the lock it installs",
    "kuberay/Dockerfile.dockerignore": "what the image build leaves out",
    "kuberay/raycluster.yaml": "the RayCluster schema, /dev/shm, the MLflow sidecar",
    "kuberay/rayjob.yaml": "the RayJob schema, the same cluster as raycluster.yaml",
    "kuberay/shared-pvc.yaml": "Kubernetes' PersistentVolumeClaim schema",
    "kuberay/mlflow-pvc.yaml": "Kubernetes' PersistentVolumeClaim schema",
}


def test_every_file_under_cluster_is_one_ci_checks():
    files = {str(f.relative_to(CLUSTER)) for f in CLUSTER.rglob("*") if f.is_file()}
    assert files == set(CHECKED), (files - set(CHECKED), set(CHECKED) - files)


def test_the_image_build_sends_what_the_dockerfile_copies_and_no_outputs():
    """The build context's filter (Dockerfile.dockerignore, top-level patterns as Docker reads
    them) keeps every path the Dockerfile copies and leaves out the outputs and stores a
    checkout grows, which would otherwise be sent to the builder."""
    import fnmatch

    ignore = [
        ln.strip()
        for ln in (CLUSTER / "kuberay" / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    copied = [
        src
        for ln in DOCKERFILE.read_text().splitlines()
        if ln.startswith("COPY")
        for src in [w for w in ln.split()[1:] if not w.startswith("--")][:-1]
    ]
    assert {"abaw_ray", "jobs", "search_spaces", "cluster/requirements.lock"} <= set(copied)
    for src in copied:
        assert not any(fnmatch.fnmatch(src, pat) for pat in ignore), src
    for grown in ("outputs", ".venv", "feature_store", "mlruns", ".git"):
        assert any(fnmatch.fnmatch(grown, pat) for pat in ignore), grown


def test_the_fake_cluster_config_passes_rays_schema():
    """cluster/fake_multinode.yaml, the local autoscaling test's cluster, against Ray's schema
    (not prepare_config: the fake provider's defaults file is not in Ray's wheel); a
    misspelt key fails."""
    from ray.autoscaler._private.util import validate_config

    validate_config(_launcher("fake_multinode.yaml"))
    misspelt = _launcher("fake_multinode.yaml")
    misspelt["max_worker"] = misspelt.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="'max_worker' was unexpected"):
        validate_config(misspelt)


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_rays_validation_rejects_a_misspelt_key_and_a_wrong_type(name):
    misspelt = _launcher(name)
    misspelt["idle_timeout_minute"] = misspelt.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        ray_validate(misspelt)
    docker_typo = _launcher(name)
    docker_typo["docker"]["worker_run_option"] = docker_typo["docker"].pop("worker_run_options")
    with pytest.raises(jsonschema.ValidationError, match="worker_run_option"):
        ray_validate(docker_typo)
    wrong_type = _launcher(name)
    wrong_type["available_node_types"]["worker_gpu"]["resources"]["GPU"] = "1"
    with pytest.raises(jsonschema.ValidationError, match="'1' is not of type 'integer'"):
        ray_validate(wrong_type)


# --------------------------------------------------------------------------- KubeRay's API


@functools.cache
def kuberay_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(KUBERAY_SCHEMA.read_text())
    return jsonschema.Draft202012Validator(schema)


def _where(*parts) -> str:
    return ".".join(str(p) for p in parts if p != "")


def kubernetes_errors(document: dict, where: str = "", inner: int = 0) -> list[str]:
    """A core Kubernetes object against kubernetes-validate's strict schema of KUBERNETES: an
    unknown field fails, as under kubectl's strict field validation. kubernetes-validate
    reports the first error only. `inner` drops that many steps of a wrapper (kubernetes_parts)
    from the error's path, `where` says where the part lies in the manifest."""
    try:
        used = kubernetes_validate.validate(document, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{_where(where, *list(error.absolute_path)[inner:])}: {error.message}"]
    assert used == KUBERNETES, f"kubernetes-validate has no Kubernetes {KUBERNETES}: {used}"
    return []


def _pod_template(template: dict) -> dict:
    """PodTemplateSpec is no kind of its own: the core kind PodTemplate holds one, at
    `template` (one step of the wrapper's paths)."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": template,
    }


def kubernetes_parts(manifest: dict) -> list[tuple[str, dict, int]]:
    """The parts of a RayCluster or RayJob that are core Kubernetes types (KubeRay's schema only
    says they are objects), each as (where, a document kubernetes-validate checks, how many
    steps of the document's paths are the wrapper)."""
    parts = []
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        return parts
    clusters = {"spec": spec}
    if manifest.get("kind") == "RayJob":
        clusters = {"spec.rayClusterSpec": spec.get("rayClusterSpec")}
        if isinstance(spec.get("submitterPodTemplate"), dict):
            template = _pod_template(spec["submitterPodTemplate"])
            parts.append(("spec.submitterPodTemplate", template, 1))
    for at, cluster in clusters.items():
        if not isinstance(cluster, dict):
            continue
        head = cluster.get("headGroupSpec") or {}
        groups = {f"{at}.headGroupSpec": head}
        workers = cluster.get("workerGroupSpecs") or []
        groups |= {f"{at}.workerGroupSpecs.{i}": g for i, g in enumerate(workers)}
        for where, group in groups.items():
            if isinstance(group, dict) and isinstance(group.get("template"), dict):
                parts.append((f"{where}.template", _pod_template(group["template"]), 1))
        if isinstance(head, dict) and isinstance(head.get("headService"), dict):
            service = {"apiVersion": "v1", "kind": "Service", **head["headService"]}
            parts.append((f"{at}.headGroupSpec.headService", service, 0))
        options = cluster.get("autoscalerOptions")
        container = {k: v for k, v in (options or {}).items() if k in AUTOSCALER_CONTAINER}
        if isinstance(options, dict) and container:
            # The autoscaler's overrides are fields of its container: checked as a Container
            # (template.spec.containers.0: four steps of the wrapper).
            pod = {"spec": {"containers": [{"name": "autoscaler", **container}]}}
            parts.append((f"{at}.autoscalerOptions", _pod_template(pod), 4))
    return parts


def kuberay_errors(manifest: dict) -> list[str]:
    """A RayCluster or RayJob manifest against KubeRay's API: the KubeRay part against the
    hand-written schema, the core Kubernetes parts against Kubernetes' own."""
    errors = [
        f"{_where(*e.absolute_path)}: {e.message}"
        for e in kuberay_validator().iter_errors(manifest)
    ]
    for where, document, inner in kubernetes_parts(manifest):
        errors += kubernetes_errors(document, where, inner)
    return errors


def _manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / "kuberay" / name).read_text())


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def test_the_kuberay_schema_is_valid_and_closes_every_object_it_defines():
    schema = json.loads(KUBERAY_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    open_objects = []

    def visit(node, path):
        if isinstance(node, dict):
            if "properties" in node and path and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, value in node.items():
                visit(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                visit(value, f"{path}/{i}")

    visit(schema["$defs"], "#/$defs")
    assert open_objects == []


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_manifests_match_kuberays_api_and_kubernetes(name):
    manifest = _manifest(name)
    assert kuberay_errors(manifest) == []
    # Every pod template and the autoscaler's container went through Kubernetes' schema.
    at = "spec.rayClusterSpec" if name == "rayjob.yaml" else "spec"
    assert [where for where, _, _ in kubernetes_parts(manifest)] == [
        f"{at}.headGroupSpec.template",
        f"{at}.workerGroupSpecs.0.template",
        f"{at}.autoscalerOptions",
    ]


def test_the_rayjobs_cluster_is_the_rayclusters_but_for_the_dashboard_host():
    cluster = _manifest("raycluster.yaml")["spec"]
    del cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"]
    assert _cluster_spec(_manifest("rayjob.yaml")) == cluster


def _has(errors: list[str], where: str, message: str) -> bool:
    return any(e.startswith(f"{where}: ") and message in e for e in errors)


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_the_kuberay_check_rejects_a_misspelt_key_and_a_wrong_type(name):
    at = "spec.rayClusterSpec" if name == "rayjob.yaml" else "spec"
    # KubeRay's part, by the hand-written schema.
    misspelt = _manifest(name)
    head = _cluster_spec(misspelt)["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    errors = kuberay_errors(misspelt)
    assert _has(errors, f"{at}.headGroupSpec", "'rayStartParam' was unexpected"), errors
    wrong_type = _manifest(name)
    _cluster_spec(wrong_type)["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    errors = kuberay_errors(wrong_type)
    where = f"{at}.headGroupSpec.rayStartParams.num-cpus"
    assert _has(errors, where, "0 is not of type 'string'"), errors
    wrong_type = _manifest(name)
    _cluster_spec(wrong_type)["workerGroupSpecs"][0]["maxReplicas"] = "8"
    errors = kuberay_errors(wrong_type)
    where = f"{at}.workerGroupSpecs.0.maxReplicas"
    assert _has(errors, where, "'8' is not of type 'integer'"), errors
    not_an_option = _manifest(name)
    _cluster_spec(not_an_option)["autoscalerOptions"]["upscalingMode"] = "Fast"
    _cluster_spec(not_an_option)["authOptions"]["mode"] = "Token"
    errors = kuberay_errors(not_an_option)
    assert _has(errors, f"{at}.autoscalerOptions.upscalingMode", "'Fast' is not one of"), errors
    assert _has(errors, f"{at}.authOptions.mode", "'Token' is not one of"), errors
    # The pod templates and the autoscaler's container, by Kubernetes' schema.
    deep = _manifest(name)
    container = _cluster_spec(deep)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")
    errors = kuberay_errors(deep)
    where = f"{at}.workerGroupSpecs.0.template.spec.containers.0"
    assert errors == [
        f"{where}: Additional properties are not allowed ('volumeMount' was unexpected)"
    ]
    deep = _manifest(name)
    sidecar = _cluster_spec(deep)["headGroupSpec"]["template"]["spec"]["containers"][1]
    sidecar["imagePullPolcy"] = sidecar.pop("imagePullPolicy")
    errors = kuberay_errors(deep)
    where = f"{at}.headGroupSpec.template.spec.containers.1"
    assert _has(errors, where, "'imagePullPolcy' was unexpected"), errors
    deep = _manifest(name)
    _cluster_spec(deep)["headGroupSpec"]["template"]["spec"]["volumes"][2]["emptyDir"][
        "sizeLimit"
    ] = ["5Gi"]
    errors = kuberay_errors(deep)
    where = f"{at}.headGroupSpec.template.spec.volumes.2.emptyDir.sizeLimit"
    assert _has(errors, where, "['5Gi'] is not valid"), errors
    deep = _manifest(name)
    resources = _cluster_spec(deep)["autoscalerOptions"]["resources"]
    resources["limit"] = resources.pop("limits")
    errors = kuberay_errors(deep)
    assert _has(errors, f"{at}.autoscalerOptions.resources", "'limit' was unexpected"), errors


# A PersistentVolumeClaim: Kubernetes' schema, plus what its OpenAPI schema leaves to the server.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
ACCESS_MODES = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
_QUANTITY = r"(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?"


def pvc_errors(manifest: dict) -> list[str]:
    if manifest.get("apiVersion") != "v1" or manifest.get("kind") != "PersistentVolumeClaim":
        return [f"not a v1 PersistentVolumeClaim: {manifest.get('kind')}"]
    errors = kubernetes_errors(manifest)
    if errors:
        return errors
    name = manifest.get("metadata", {}).get("name")
    if not (name and len(name) <= 63 and re.fullmatch(_DNS_LABEL, name)):
        errors.append(f"metadata.name: {name!r} is not a DNS label")
    spec = manifest.get("spec", {})
    modes = spec.get("accessModes") or []
    if not modes or set(modes) - set(ACCESS_MODES):
        errors.append(f"spec.accessModes: {modes} are not some of {ACCESS_MODES}")
    storage = spec.get("resources", {}).get("requests", {}).get("storage")
    if not re.fullmatch(_QUANTITY, str(storage)):
        errors.append(f"spec.resources.requests.storage: {storage!r} is not a quantity")
    return errors


def _claims(manifest: dict) -> dict[str, set[str]]:
    """Group ("head" or the worker group's name) -> the PVCs its pods mount."""
    spec = _cluster_spec(manifest)
    groups = {"head": spec["headGroupSpec"]}
    groups |= {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    return {
        name: {
            v["persistentVolumeClaim"]["claimName"]
            for v in group["template"]["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        for name, group in groups.items()
    }


def test_the_pvcs_are_valid_and_are_the_claims_the_pods_mount():
    pvcs = {name: _manifest(name) for name in PVCS}
    for name, access in PVCS.items():
        assert pvc_errors(pvcs[name]) == [], name
        assert pvcs[name]["spec"]["accessModes"] == [access], name
    names = {pvc["metadata"]["name"] for pvc in pvcs.values()}
    for manifest in KUBERAY_MANIFESTS:
        claims = _claims(_manifest(manifest))
        assert set().union(*claims.values()) == names, manifest
        assert all(MLFLOW_CLAIM not in c for g, c in claims.items() if g != "head"), manifest
    # Kubernetes' schema: a misspelt key, a wrong type.
    misspelt = copy.deepcopy(pvcs["mlflow-pvc.yaml"])
    misspelt["spec"]["storageClass"] = misspelt["spec"].pop("storageClassName")
    assert pvc_errors(misspelt) == [
        "spec: Additional properties are not allowed ('storageClass' was unexpected)"
    ]
    wrong_type = copy.deepcopy(pvcs["shared-pvc.yaml"])
    wrong_type["spec"]["accessModes"] = "ReadWriteMany"
    errors = pvc_errors(wrong_type)
    assert _has(errors, "spec.accessModes", "'ReadWriteMany' is not of type 'array'"), errors
    # What it leaves to the API server.
    unknown = copy.deepcopy(pvcs["shared-pvc.yaml"])
    unknown["metadata"]["name"] = "abaw_shared"
    unknown["spec"]["accessModes"] = ["ReadWriteAll"]
    unknown["spec"]["resources"]["requests"]["storage"] = "1TB"
    assert pvc_errors(unknown) == [
        "metadata.name: 'abaw_shared' is not a DNS label",
        f"spec.accessModes: ['ReadWriteAll'] are not some of {ACCESS_MODES}",
        "spec.resources.requests.storage: '1TB' is not a quantity",
    ]


# --------------------------------------------------------------------------- /dev/shm


def quantity(value: str | int) -> float:
    """A Kubernetes quantity in bytes (the suffixes these files use)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G)?", str(value))
    return float(found[1]) * units.get(found[2], 1)


def shm_problems(manifest: dict) -> list[str]:
    """Pods whose /dev/shm cannot hold Ray's object store (Ray then falls back to /tmp)."""
    from ray._private.ray_constants import DEFAULT_OBJECT_STORE_MEMORY_PROPORTION

    spec = _cluster_spec(manifest)
    groups = {"head": spec["headGroupSpec"]}
    groups |= {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    problems = []
    for name, group in groups.items():
        pod = group["template"]["spec"]
        ray = pod["containers"][0]  # KubeRay's Ray container is the first
        mounts = [m for m in ray.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        shm = volumes[mounts[0]["name"]].get("emptyDir", {}) if mounts else {}
        if shm.get("medium") != "Memory" or "sizeLimit" not in shm:
            problems.append(f"{name}: no sized, memory-backed /dev/shm (a pod's default: 64 MiB)")
            continue
        params = group.get("rayStartParams", {})
        if "object-store-memory" in params:
            store = float(params["object-store-memory"])
        else:  # Ray's default: a share of the memory it sees, the container's limit
            limit = quantity(ray["resources"]["limits"]["memory"])
            store = DEFAULT_OBJECT_STORE_MEMORY_PROPORTION * limit
        if quantity(shm["sizeLimit"]) < store:
            problems.append(
                f"{name}: /dev/shm {shm['sizeLimit']} < object store {store / 2**30:.1f} GiB"
            )
    return problems


def launcher_shm_problems(config: dict) -> list[str]:
    """The launcher runs Ray in docker, whose /dev/shm Ray sizes to 1.1 x the default object
    store, unless told otherwise."""
    docker = config.get("docker", {})
    options = [o for k, v in docker.items() if k.endswith("run_options") for o in v]
    if not docker.get("image"):
        return ["not in docker"]
    if docker.get("disable_shm_size_detection") or any("--shm-size" in o for o in options):
        return ["/dev/shm is not sized by Ray"]
    return []


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_dev_shm_holds_the_object_store_in_every_pod(name):
    assert shm_problems(_manifest(name)) == []


def test_the_shm_check_rejects_the_original_head_and_a_fixed_shm_size():
    manifest = _manifest("raycluster.yaml")  # the head as it was: 16 Gi, 4 Gi of /dev/shm
    head = manifest["spec"]["headGroupSpec"]
    del head["rayStartParams"]["object-store-memory"]
    dshm = next(v for v in head["template"]["spec"]["volumes"] if v["name"] == "dshm")
    dshm["emptyDir"]["sizeLimit"] = "4Gi"
    assert shm_problems(manifest) == ["head: /dev/shm 4Gi < object store 4.8 GiB"]
    for name in LAUNCHER_CONFIGS:
        config = _launcher(name)
        assert launcher_shm_problems(config) == []
        config["docker"]["run_options"].append("--shm-size=1g")
        assert launcher_shm_problems(config) == ["/dev/shm is not sized by Ray"]


# --------------------------------------------------------------------------- the head


def _option(words: list[str], option: str) -> str | None:
    for i, word in enumerate(words):
        if word == option and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def mlflow_server_problems(words: list[str], local_store: str) -> list[str]:
    """An `mlflow server` command line: loopback, port 5000, its SQLite database on local disk
    (under local_store), artifacts served from the shared file system."""
    problems = []
    if _option(words, "--host") != "127.0.0.1" or _option(words, "--port") != "5000":
        problems.append("mlflow server: not on 127.0.0.1:5000")
    store = _option(words, "--backend-store-uri") or ""
    if not store.startswith(f"sqlite:///{local_store}/"):
        problems.append(f"mlflow server: database {store!r} not under {local_store}")
    destination = _option(words, "--artifacts-destination") or ""
    if "--serve-artifacts" not in words or not destination.startswith("/shared/"):
        problems.append("mlflow server: does not serve artifacts from /shared")
    return problems


def launcher_head_problems(config: dict) -> list[str]:
    problems = []
    head = config["available_node_types"][config["head_node_type"]]
    if head["resources"].get("CPU") != 0 or head["resources"].get("memory") != 0:
        problems.append(f"head resources {head['resources']}: not CPU 0 and memory 0")
    starts = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    before = starts[0][: starts[0].index("ray start --head")] if len(starts) == 1 else ""
    for variable, value in HEAD_ENV.items():
        exported = re.search(rf"\bexport\b[^;]*\b{variable}=(\S+)", before)
        if not exported or exported[1].rstrip(";") != value:
            problems.append(f"{variable}={value} is not exported before `ray start --head`")
    servers = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    if len(servers) != 1:
        problems.append("the head's start commands do not start one MLflow server")
    else:
        words = shlex.split(servers[0])
        head_options = config.get("docker", {}).get("head_run_options", [])
        volume = next((o for o in head_options if "mlflow" in o), "<no volume>")
        problems += mlflow_server_problems(words, volume.split(":")[-1])
        once = servers[0].startswith("kill -0") and "nohup mlflow server" in servers[0]
        if not (once and "&" in words):
            problems.append("the MLflow server is not started once, in the background")
    elsewhere = {k: v for k, v in _commands(config).items() if k != "head_start_ray_commands"}
    elsewhere["docker"] = [str(config.get("docker", {}))]
    for node_type in config["available_node_types"].values():
        elsewhere |= {k: v for k, v in node_type.items() if k.endswith(("_commands", "docker"))}
    for variable in HEAD_ENV:
        where = [k for k, v in elsewhere.items() if variable in str(v)]
        if where:
            problems.append(f"{variable} is set outside the head's start commands: {where}")
    return problems


def kuberay_head_problems(manifest: dict) -> list[str]:
    spec = _cluster_spec(manifest)
    head = spec["headGroupSpec"]
    problems = []
    params = head["rayStartParams"]
    if params.get("num-cpus") != "0" or params.get("memory") != "0":
        problems.append(f"head rayStartParams {params}: not num-cpus 0 and memory 0")
    pod = head["template"]["spec"]
    ray, *sidecars = pod["containers"]
    env = {e["name"]: e.get("value") for e in ray.get("env", [])}
    for variable, value in HEAD_ENV.items():
        if env.get(variable) != value:
            problems.append(f"ray-head: {variable} is {env.get(variable)!r}, not {value!r}")
    servers = [c for c in sidecars if c.get("command", [])[:2] == ["mlflow", "server"]]
    if len(servers) != 1:
        problems.append("the head pod has no mlflow server sidecar")
    else:
        server = servers[0]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = server.get("volumeMounts", [])
        local = [m["mountPath"] for m in mounts if claims.get(m["name"]) == MLFLOW_CLAIM]
        words = server["command"] + server.get("args", [])
        problems += mlflow_server_problems(words, local[0] if local else "<no volume>")
        if server["image"] != ray["image"]:
            problems.append("mlflow sidecar: not the Ray container's image")
    for group in spec["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            if names & HEAD_ENV.keys():
                problems.append(f"{group['groupName']}: sets {sorted(names & HEAD_ENV.keys())}")
    return problems


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_head_offers_no_cpu_nor_memory_and_runs_mlflow(name):
    assert launcher_head_problems(_launcher(name)) == []


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_head_offers_no_cpu_nor_memory_and_runs_mlflow(name):
    assert kuberay_head_problems(_manifest(name)) == []


def test_the_head_checks_reject_what_the_configs_were_and_a_worker_with_the_head_env():
    original = yaml.safe_load((ORIGINALS / "gcp.orig.yaml").read_text())
    problems = launcher_head_problems(original)
    assert "head resources {'CPU': 0}: not CPU 0 and memory 0" in problems
    assert "the head's start commands do not start one MLflow server" in problems
    assert any(p.startswith("MLFLOW_TRACKING_URI=") for p in problems), problems
    config = _launcher("aws.yaml")
    config["setup_commands"].append("export RAY_JOB_STOP_WAIT_TIME_S=60")
    assert launcher_head_problems(config) == [
        "RAY_JOB_STOP_WAIT_TIME_S is set outside the head's start commands: ['setup_commands']"
    ]
    manifest = _manifest("rayjob.yaml")
    spec = _cluster_spec(manifest)
    del spec["headGroupSpec"]["rayStartParams"]["memory"]
    spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "MLFLOW_TRACKING_URI", "value": "http://127.0.0.1:5000"}
    )
    spec["headGroupSpec"]["template"]["spec"]["containers"].pop()  # the mlflow sidecar
    assert kuberay_head_problems(manifest) == [
        "head rayStartParams {'num-cpus': '0', 'object-store-memory': '4294967296'}: "
        "not num-cpus 0 and memory 0",
        "the head pod has no mlflow server sidecar",
        "gpu: sets ['MLFLOW_TRACKING_URI']",
    ]


# --------------------------------------------------------------------------- GCP Spot


def spot_scheduling(config_text: str) -> dict:
    """The worker's scheduling block once its Spot lines are uncommented, as a user would:
    the run of commented YAML lines around `provisioningModel: SPOT`, either a whole
    `scheduling:` block that replaces the active one, or lines inside the active block."""
    lines = config_text.splitlines()
    at = next(i for i, ln in enumerate(lines) if re.match(r"\s*#\s*provisioningModel: SPOT", ln))
    column = lines[at].index("#")

    def yaml_line(i: int) -> bool:
        line = lines[i]
        return (
            line[:column].strip() == ""
            and line[column:].startswith("# ")
            and re.fullmatch(r" *[A-Za-z]\w*:( .*)?", line[column + 2 :]) is not None
        )

    start, end = at, at
    while start > 0 and yaml_line(start - 1):
        start -= 1
    while end + 1 < len(lines) and yaml_line(end + 1):
        end += 1
    block = [ln[:column] + ln[column + 2 :] for ln in lines[start : end + 1]]
    if block[0].strip() == "scheduling:":
        return yaml.safe_load("\n".join(ln[column:] for ln in block))["scheduling"]
    uncommented = "\n".join(lines[:start] + block + lines[end + 1 :])
    worker = yaml.safe_load(uncommented)["available_node_types"]["worker_gpu"]
    return worker["node_config"]["scheduling"]


def gcp_scheduling_problems(scheduling: dict) -> list[str]:
    """Compute Engine's rules for a GPU VM's scheduling block (docs "Create and use Spot VMs"
    and "About GPUs"): GPU VMs cannot live-migrate; Spot VMs cannot restart automatically."""
    problems = []
    if scheduling.get("onHostMaintenance") != "TERMINATE":
        problems.append("a GPU VM needs onHostMaintenance: TERMINATE")
    if scheduling.get("provisioningModel") == "SPOT":
        if scheduling.get("automaticRestart") is not False:
            problems.append("a Spot VM needs automaticRestart: false")
        if scheduling.get("instanceTerminationAction", "DELETE") not in ("DELETE", "STOP"):
            problems.append("instanceTerminationAction is DELETE or STOP")
    return problems


def test_gcp_scheduling_is_valid_and_its_spot_comment_uncomments_to_a_valid_block():
    text = (CLUSTER / "gcp.yaml").read_text()
    active = yaml.safe_load(text)["available_node_types"]["worker_gpu"]["node_config"]
    assert gcp_scheduling_problems(active["scheduling"]) == []
    spot = spot_scheduling(text)
    assert spot["provisioningModel"] == "SPOT"
    assert gcp_scheduling_problems(spot) == []


def test_the_spot_check_rejects_the_original_comment():
    spot = spot_scheduling((ORIGINALS / "gcp.orig.yaml").read_text())
    assert spot == {
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": True,
        "provisioningModel": "SPOT",
    }
    assert gcp_scheduling_problems(spot) == ["a Spot VM needs automaticRestart: false"]
