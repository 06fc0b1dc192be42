#!/usr/bin/env bash
# Installs the toolkit into an image tree as one unit: the package under
# /usr/lib/cos/site (precompiled, since / is read-only at runtime) and /usr/bin/cos.
# Its runtime dependencies come from Debian (python3-yaml, python3-rich).
set -euo pipefail
root=${1:?usage: install-toolkit.sh ROOT REPO}
repo=${2:?usage: install-toolkit.sh ROOT REPO}
rm -rf "$root/usr/lib/cos/site"
mkdir -p "$root/usr/lib/cos/site"
cp -a "$repo/src/cos" "$root/usr/lib/cos/site/cos"
find "$root/usr/lib/cos/site" -name '__pycache__' -prune -exec rm -rf {} +
cat > "$root/usr/bin/cos" <<'PY'
#!/usr/bin/python3 -I
import sys

sys.path.insert(0, "/usr/lib/cos/site")
from cos.cli import main  # noqa: E402

sys.exit(main())
PY
chmod 0755 "$root/usr/bin/cos"
chroot "$root" /usr/bin/python3 -m compileall -q /usr/lib/cos/site
