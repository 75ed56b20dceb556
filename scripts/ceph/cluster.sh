#!/usr/bin/env bash
# A single-node Ceph for Shoal's tests: one monitor, one manager, one BlueStore OSD on a sparse file and
# one radosgw on 127.0.0.1, all state in one directory, no systemd (each daemon runs with -c DIR/ceph.conf).
#
#   scripts/ceph/cluster.sh start  [DIR]   bring up whatever is not running (creates the cluster on first use)
#   scripts/ceph/cluster.sh status [DIR]   exit 0 and print the S3 env file if radosgw answers, else exit 1
#   scripts/ceph/cluster.sh stop   [DIR]   stop the daemons, keep the state (a later start resumes it)
#   scripts/ceph/cluster.sh purge  [DIR]   stop the daemons and delete DIR
#
# DIR defaults to $SHOAL_CEPH_DIR or /tmp/shoal-ceph. `start` prints, and leaves in DIR/s3.env, lines a
# shell can source and tests read: S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
# CEPH_CONF. Needs Debian's ceph-mon ceph-mgr ceph-osd radosgw ceph-common, and node (to pick free ports).
set -euo pipefail

cmd=${1:-}
dir=${2:-${SHOAL_CEPH_DIR:-/tmp/shoal-ceph}}
case "$cmd" in start | stop | status | purge) ;; *)
  echo "usage: $0 start|status|stop|purge [DIR]" >&2
  exit 2
  ;;
esac
mkdir -p "$(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
conf=$dir/ceph.conf
env_file=$dir/s3.env
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

# Test processes call `start` concurrently: one of them builds the cluster, the others then find it up.
exec 9>"$dir.lock"
flock 9

say() { echo "ceph-test-cluster: $*" >&2; }
die() {
  say "$*"
  exit 1
}

pid_of() { # the live pid of daemon $1 (e.g. mon.a), or nothing
  local f=$dir/run/$1.pid
  [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
  return 0
}

rgw_port() { sed -n 's/^rgw_frontends = beast endpoint=127.0.0.1:\([0-9]*\)$/\1/p' "$conf"; }

rgw_answers() { # an HTTP answer of any status from radosgw's port
  local port
  port=$(rgw_port)
  [ -n "$port" ] || return 1
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    timeout 2 head -c 12 <&3 | grep -q '^HTTP/1\.[01] '
  ) 2>/dev/null
}

stop_daemons() { # stop_daemons GRACE_SECONDS NAME...: SIGTERM to each at once, SIGKILL to any left after GRACE
  local grace=$1 pids=() pid alive
  shift
  for d in "$@"; do
    pid=$(pid_of "$d")
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then pids+=("$pid"); fi
  done
  for _ in $(seq $((grace * 10))); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

# In three waves, each daemon taking ~2 s: radosgw's shutdown hangs for its 120 s alarm if the OSD goes
# first (it holds no state of its own: whatever it acknowledged is in RADOS), and the OSD going down waits
# for the monitor to acknowledge it.
stop_all() {
  stop_daemons 5 client.rgw.shoal
  stop_daemons 10 osd.0 mgr.x
  stop_daemons 10 mon.a
}

case "$cmd" in
status)
  if [ -f "$env_file" ] && rgw_answers; then
    cat "$env_file"
    exit 0
  fi
  exit 1
  ;;
stop)
  [ -f "$conf" ] && stop_all
  exit 0
  ;;
purge)
  [ -f "$conf" ] && stop_all
  rm -rf "$dir"
  exit 0
  ;;
esac

for tool in ceph-mon ceph-mgr ceph-osd radosgw radosgw-admin ceph monmaptool node; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install ceph-mon ceph-mgr ceph-osd radosgw ceph-common)."
done

all_up() {
  for d in mon.a mgr.x osd.0 client.rgw.shoal; do [ -n "$(pid_of "$d")" ] || return 1; done
  [ -f "$env_file" ] && rgw_answers
}
if [ -f "$conf" ] && all_up; then
  cat "$env_file"
  exit 0
fi

started=$(date +%s%N)
elapsed_ms() { echo $((($(date +%s%N) - started) / 1000000)); }
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
ceph_cli() { ceph -c "$conf" --connect-timeout 20 "$@"; }

# A daemon must not inherit the lock's descriptor: it would hold the lock for as long as it runs.
launch() { "$@" 9>&-; }

wait_for() { # wait_for SECONDS WHAT COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$what did not come up in ${seconds}s; see $dir/log."
}

if [ ! -f "$conf" ]; then
  # A directory without a config is a cluster whose creation was cut short: start over.
  rm -rf "$dir"
  mkdir -p "$dir"/{run,log,mon,mgr,osd,rgw}
  fsid=$(cat /proc/sys/kernel/random/uuid)
  mon_port=$(free_port)
  rgw_port=$(free_port)
  mgr_modules=$(find /usr/share/ceph/mgr -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | paste -sd, -)
  # Every size and thread count is the smallest that serves a test suite: this Ceph shares two cores
  # and the machine's memory with the tests. Without cephx: only processes on this host can reach it,
  # and S3 requests are still authenticated by radosgw with the user's keys.
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
public_addr = 127.0.0.1
ms_bind_msgr1 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
; radosgw asks for an encrypted monitor session by default, which a cluster without cephx cannot give
ms_mon_client_mode = crc
; Every gateway (tests start their own next to the shared one) watches the others' metadata changes
; when its cache is on: a gateway a test killed or froze then stalls every bucket creation for ~20 s
; until its watch times out. Without the cache there is no watch; each request reads bucket metadata.
rgw_cache_enabled = false
run_dir = $dir/run
pid_file = $dir/run/\$name.pid
admin_socket = $dir/run/\$name.asok
log_file = $dir/log/\$name.log
keyring = $dir/keyring
mon_data = $dir/mon/\$name
mgr_data = $dir/mgr/\$name
osd_data = $dir/osd/\$name
; one OSD holds every placement group once: no replication, few PGs
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_data_avail_warn = 5
mon_warn_on_insecure_global_id_reclaim_allowed = false
; a daemon that cannot reach the monitor says so in seconds, not after five minutes
client_mount_timeout = 30
debug_ms = 0

[mon]
mon_allow_pool_delete = true
; a map change (each pool radosgw creates, the OSD's boot) waits for the next proposal: every 1 s by
; default, which made a first start take 15 s
paxos_propose_interval = 0.05
paxos_min_wait = 0.01

[mgr]
; the manager's Python modules cost ~250 MiB and a tenth of a core here, and no test needs one
mgr_disabled_modules = $mgr_modules

[osd]
osd_objectstore = bluestore
; a sparse file: it takes on disk only what the tests write
bluestore_block_path = $dir/osd/osd.0.block
bluestore_block_create = true
bluestore_block_size = 10737418240
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
; a fixed 64 MiB cache instead of tuning the caches to a 4 GiB memory target (lowered to its minimum,
; 896 MiB, too); the OSD stays near 50 MiB idle and 250 MiB after the S3 tests
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
osd_memory_target = 939524096
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2

[client.rgw.shoal]
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port
rgw_data = $dir/rgw
rgw_thread_pool_size = 32
rgw_enable_usage_log = false
rgw_dynamic_resharding = false
EOF
  : >"$dir/keyring"
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" 2>>"$dir/log/mkfs.log"
fi

# Monitor, manager, OSD, gateway: each started only if it is not running (a second start is a no-op).
[ -n "$(pid_of mon.a)" ] || launch ceph-mon -c "$conf" -i a
wait_for 30 "the monitor" ceph_cli mon stat
say "monitor up at $(elapsed_ms) ms"
if [ -z "$(pid_of mgr.x)" ]; then
  # Without its modules the manager reports the always-on ones as failed: that is by choice here.
  ceph_cli health mute MGR_MODULE_ERROR --sticky >/dev/null 2>&1 || true
  launch ceph-mgr -c "$conf" -i x
fi

if [ ! -f "$dir/osd/osd.0/fsid" ]; then
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  osd_id=$(ceph_cli osd new "$osd_uuid")
  [ "$osd_id" = 0 ] || die "the monitor gave the OSD id $osd_id, expected 0."
  mkdir -p "$dir/osd/osd.0"
  ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$dir/log/mkfs.log" 2>&1
fi
[ -n "$(pid_of osd.0)" ] || launch ceph-osd -c "$conf" -i 0 2>>"$dir/log/osd.0.stderr"
osd_up() { ceph_cli osd dump | grep -q '^osd\.0 up'; }
wait_for 60 "the OSD" osd_up
say "OSD up at $(elapsed_ms) ms"

[ -n "$(pid_of client.rgw.shoal)" ] || launch radosgw -c "$conf" -n client.rgw.shoal
wait_for 60 "radosgw" rgw_answers
say "radosgw answers at $(elapsed_ms) ms"

if [ ! -f "$env_file" ]; then
  access=$(head -c 15 /dev/urandom | base32)
  secret=$(head -c 30 /dev/urandom | base64 | tr '+/' 'xy')
  radosgw-admin -c "$conf" user create --uid=shoal --display-name="Shoal tests" \
    --access-key="$access" --secret="$secret" >/dev/null 2>>"$dir/log/admin.log"
  cat >"$env_file.tmp" <<EOF
S3_ENDPOINT=http://127.0.0.1:$(rgw_port)
AWS_ACCESS_KEY_ID=$access
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=us-east-1
CEPH_CONF=$conf
EOF
  mv "$env_file.tmp" "$env_file"
fi
say "up in $(elapsed_ms) ms ($dir)"
cat "$env_file"
