"""Reads `helm template` output on standard input, validates every manifest
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields are errors) of each version given as an argument, and prints
{"manifests": [...], "unvalidated": ["apiVersion/Kind", ...]} as JSON: the
manifests, and the kinds no schema covers (custom resources), which the
caller checks itself. Exits 1 naming every invalid manifest.

Used by tests/it/chart.rs:  python3 manifests.py 1.27.0 1.37.0 < rendered.yaml
"""

import json
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError


def main() -> int:
    versions = sys.argv[1:]
    if not versions:
        print("usage: manifests.py KUBERNETES_VERSION...", file=sys.stderr)
        return 2
    manifests = [doc for doc in yaml.safe_load_all(sys.stdin) if doc]
    errors, unvalidated = [], set()
    for manifest in manifests:
        name = f'{manifest.get("kind")}/{manifest.get("metadata", {}).get("name")}'
        for version in versions:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except SchemaNotFoundError:
                unvalidated.add(f'{manifest["apiVersion"]}/{manifest["kind"]}')
            except ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                errors.append(f"{name} (Kubernetes {version}): {path}: {error.message}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    json.dump({"manifests": manifests, "unvalidated": sorted(unvalidated)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
