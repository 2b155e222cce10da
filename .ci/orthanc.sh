# Sourced by .ci/run: a throw-away Orthanc PACS on 127.0.0.1 for the `liverscope pacs` round-trip test.
# start_orthanc installs Debian's `orthanc` when missing, writes a minimal configuration into a temporary
# folder (its own storage and index there, HTTP on a free port, no DICOM listener, no plugins, no login,
# no remote access), starts it, waits until its REST API answers and exports LIVERSCOPE_TEST_ORTHANC;
# stop_orthanc stops it and deletes the folder. Where it cannot start, tests/test_pacs.py skips and says why.

start_orthanc() {
  ORTHANC_BIN=$(command -v Orthanc || echo /usr/sbin/Orthanc)
  if [ ! -x "$ORTHANC_BIN" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc >/dev/null) \
      || { echo "warning: could not install orthanc; the PACS round-trip test will be skipped"; return 0; }
    ORTHANC_BIN=$(command -v Orthanc || echo /usr/sbin/Orthanc)
  fi
  ORTHANC_DIR=$(mktemp -d /tmp/liverscope-orthanc.XXXXXX)
  ORTHANC_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$ORTHANC_DIR/orthanc.json" <<JSON
{"Name": "liverscope-ci", "StorageDirectory": "$ORTHANC_DIR/db", "IndexDirectory": "$ORTHANC_DIR/db",
 "HttpPort": $ORTHANC_PORT, "DicomServerEnabled": false, "RemoteAccessAllowed": false,
 "AuthenticationEnabled": false, "Plugins": []}
JSON
  "$ORTHANC_BIN" "$ORTHANC_DIR/orthanc.json" >"$ORTHANC_DIR/orthanc.log" 2>&1 &
  ORTHANC_PID=$!
  if python3 - "http://127.0.0.1:$ORTHANC_PORT/system" <<'PY'
import sys, time, urllib.request
for _ in range(60):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2).read()
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PY
  then
    export LIVERSCOPE_TEST_ORTHANC="http://127.0.0.1:$ORTHANC_PORT"
    echo "Orthanc $("$ORTHANC_BIN" --version | head -1 | awk '{print $NF}') on $LIVERSCOPE_TEST_ORTHANC for the PACS test"
  else
    echo "warning: Orthanc did not start (see below); the PACS round-trip test will be skipped"
    tail -5 "$ORTHANC_DIR/orthanc.log" || true
  fi
}

stop_orthanc() {
  if [ -n "${ORTHANC_PID:-}" ]; then
    kill "$ORTHANC_PID" 2>/dev/null && wait "$ORTHANC_PID" 2>/dev/null || true
  fi
  if [ -n "${ORTHANC_DIR:-}" ] && [ -d "$ORTHANC_DIR" ]; then rm -rf "$ORTHANC_DIR"; fi
}
