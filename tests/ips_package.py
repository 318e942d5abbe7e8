"""The IPS 2.0.0 npm package (``hl7.fhir.uv.ips``) and the packages its profiles need
(``hl7.fhir.uv.extensions.r4`` 5.3.0-ballot-tc1, and the R4 examples package for the core
``vitalsigns`` profile), fetched once with ``npm pack`` into the cache folder
(``WHATMATTERS_CACHE``, default ``~/.cache/whatmatters``) as ``.ci/run`` does;
``WHATMATTERS_IPS_PACKAGE`` may name a copy already on disk (its dependencies beside it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

from service.validation.packages import IPS_DEPENDENCIES, IPS_FILE, DocumentChecker, load_ips
from tests.r4_package import package_path as r4_examples

NPM_NAMES = {
    IPS_FILE: "hl7.fhir.uv.ips@2.0.0",
    "hl7.fhir.uv.extensions.r4-5.3.0-ballot-tc1.tgz": "hl7.fhir.uv.extensions.r4@5.3.0-ballot-tc1",
}


def ips_package_path() -> Path:
    """The IPS package, its dependencies beside it; fetched with npm when not cached yet."""
    configured = os.environ.get("WHATMATTERS_IPS_PACKAGE")
    if configured:
        return Path(configured)
    r4_examples()  # the R4 examples package, in the same cache folder
    cache_dir = Path(os.environ.get("WHATMATTERS_CACHE", Path.home() / ".cache" / "whatmatters"))
    for file_name, spec in NPM_NAMES.items():
        if (cache_dir / file_name).exists():
            continue
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"The IPS tests need npm (or WHATMATTERS_IPS_PACKAGE): {spec}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "pack", spec, "--pack-destination", str(cache_dir)],
            check=True,
            capture_output=True,
            timeout=600,
        )
    assert all((cache_dir / name).exists() for name in IPS_DEPENDENCIES)
    return cache_dir / IPS_FILE


@cache
def ips_checker() -> DocumentChecker:
    """The IPS 2.0.0 document check, loaded once per run."""
    checker = load_ips(ips_package_path())
    assert checker is not None
    return checker
