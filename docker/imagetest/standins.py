"""The stand-in base images, for a machine that reaches no image registry: Debian bookworm
from debootstrap (`docker import`), then the Dockerfiles in standin-images/ on top of it.
Only how to make them; what the test asserts never depends on this module."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import engine
from .checks import Failed

HERE = Path(__file__).resolve().parent
DEBIAN = "manifold-standin/debian:bookworm"
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"   # this network re-signs HTTPS: pip, apt need it


def names(ray_version: str) -> dict[str, str]:
    """The stand-in for each base, by its directory under standin-images/."""
    return {"ray": f"manifold-standin/ray:{ray_version}", "python": "manifold-standin/python:bookworm",
            "postgres": "manifold-standin/postgres:15"}


def import_debian(work: Path, logs: Path, mirror: str) -> None:
    """debootstrap a minimal bookworm with python3, add this host's CA bundle, `docker import` it."""
    if os.geteuid() != 0:
        raise Failed(f"making {DEBIAN} needs root (debootstrap): run this as root once")
    rootfs = work / "rootfs"
    engine.info(f"debootstrap bookworm (minbase + {PACKAGES.replace(',', ', ')})")
    engine.logged(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
                   str(rootfs), mirror], logs / "debootstrap.log",
                  f"debootstrap (mirror {mirror}; set DEBIAN_MIRROR)", tail=30)
    shutil.copy(CA_BUNDLE, rootfs / CA_BUNDLE.lstrip("/"))
    for p in [*(rootfs / "var/cache/apt/archives").glob("*.deb"), *(rootfs / "var/lib/apt/lists").glob("*")]:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    old = engine.image_id(DEBIAN)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        engine.logged(["docker", "import", "--change", "LABEL org.manifold-sweeps.standin=debian",
                       "--change", 'CMD ["bash"]', "-", DEBIAN], logs / "import.log",
                      f"docker import {DEBIAN}", stdin=tar.stdout)
    finally:
        tar.stdout.close()            # so that tar stops if the import did
        tar.wait()
    shutil.rmtree(rootfs)
    engine.info(f"imported {DEBIAN}")
    engine.drop_replaced(old, DEBIAN)


def build(work: Path, logs: Path, ray_version: str, rebuild: bool, mirror: str, timeout: float) -> None:
    """Make the stand-ins (Debian only if missing or `rebuild`; the others are cached builds)."""
    if rebuild or engine.image_id(DEBIAN) is None:
        import_debian(work, logs, mirror)
    else:
        engine.info(f"{DEBIAN} exists (--rebuild-standins makes it anew)")
    for name, tag in names(ray_version).items():
        old = engine.image_id(tag)
        engine.logged(["docker", "build", "--build-arg", f"DEBIAN={DEBIAN}",
                       "--build-arg", f"RAY_VERSION={ray_version}", "-t", tag,
                       str(HERE / "standin-images" / name)], logs / f"standin-{name}.log",
                      f"building the stand-in {tag}", timeout=timeout, limit="BUILD_TIMEOUT")
        engine.drop_replaced(old, tag)
        engine.info(f"{tag}: {engine.image_size(tag)}")
