# Sourced by render-manifests.sh and test-deploy.sh: a Python venv under /var/tmp with the
# pinned packages of deploy/test/requirements.txt, reinstalled only when that file changes.
# Sets DEPLOY_PY to the venv's python.
DEPLOY_VENV=${DEPLOY_VENV:-/var/tmp/damselfly-deploy-venv}
deploy_requirements="$ROOT/deploy/test/requirements.txt"
deploy_stamp="$DEPLOY_VENV/.requirements.sha256"
deploy_want=$(sha256sum "$deploy_requirements" | cut -d' ' -f1)
if [ ! -x "$DEPLOY_VENV/bin/python" ] || [ "$(cat "$deploy_stamp" 2>/dev/null)" != "$deploy_want" ]; then
    echo "[deploy-venv] installing deploy/test/requirements.txt into $DEPLOY_VENV"
    rm -rf "$DEPLOY_VENV"
    # Debian's python3 (python3-venv from setup.sh), not whatever python3 comes first on PATH.
    /usr/bin/python3 -m venv "$DEPLOY_VENV"
    "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -r "$deploy_requirements"
    echo "$deploy_want" >"$deploy_stamp"
fi
DEPLOY_PY="$DEPLOY_VENV/bin/python"
