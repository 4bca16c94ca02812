#!/usr/bin/env bash
# Start a local Ray head for `tokenmill submit` and `tokenmill jobs`: GCS, raylet and the dashboard with its
# Jobs API. Whoever reaches the Jobs API can run any command as you, so the head and its dashboard bind to
# 127.0.0.1 unless --host says otherwise. On a loopback --host every server of the head (GCS, raylet,
# dashboard, agents, workers) binds to it: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's single-machine mode,
# which takes the given address as it is (Ray otherwise swaps 127.0.0.1 for the machine's network address)
# and lets no other machine join.
#
#   infra/local/start-head.sh [--host IP] [--port N] [--dashboard-port N] [--num-cpus N] [--temp-dir DIR]
#                             [--block] [--dry-run] [-- MORE RAY START OPTIONS...]
#
#   --host IP            the head's address and the dashboard's bind address (default 127.0.0.1: this machine
#                        only); give this machine's network IP to let other machines join or submit
#   --port N             the GCS port that workers join (default 6379)
#   --dashboard-port N   the dashboard and Jobs API, `--address http://IP:N` (default 8265)
#   --num-cpus N         CPUs the head offers to tasks (default: all)
#   --temp-dir DIR       Ray's session, log and socket folder (default Ray's /tmp/ray); keep it short, the
#                        unix socket paths inside it must fit in 107 bytes
#   --block              stay in the foreground; Ctrl-C or `kill PID` stops the head and all it started
#   --dry-run            print the `ray start` command instead of running it
#
# Every other server of the head listens on a port picked free now (the dashboard agent's, 52365 by default, the
# Ray client server's, 10001, and the rest), so a head starts beside another Ray on the machine; a port given
# after `--` is kept. A --port or --dashboard-port in use is refused, naming the option.
#
# Token authentication is on (RAY_AUTH_MODE=token) unless RAY_AUTH_MODE says otherwise: every request to the
# dashboard and the cluster must carry the token. When there is none yet (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
# or ~/.ray/auth_token), Ray generates one into ~/.ray/auth_token. Clients on this machine use it after
# `export RAY_AUTH_MODE=token`; others need the token too, e.g. in RAY_AUTH_TOKEN.
#
# Without --block, `ray start` returns once the head is up and `ray stop` stops it (with every other Ray of
# this user on the machine). Jobs run the `python` first on PATH; this script puts the project's .venv/bin
# first when it exists. With a network --host, Ray's gRPC servers listen on every interface (seen with ray
# 2.60): keep such a machine behind a firewall.
set -euo pipefail

host=127.0.0.1 port=6379 dashboard_port=8265 num_cpus="" temp_dir="" block=0 dry_run=0
more=()
while (($#)); do
  case $1 in
    --host) host=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --dashboard-port) dashboard_port=$2; shift 2 ;;
    --num-cpus) num_cpus=$2; shift 2 ;;
    --temp-dir) temp_dir=$2; shift 2 ;;
    --block) block=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; more=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "start-head.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ $host == 0.0.0.0 || $host == "::" ]]; then
  echo "start-head.sh: --host is the address others reach this head at; give this machine's IP, not $host" >&2
  exit 2
fi

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
settings=("RAY_AUTH_MODE=$RAY_AUTH_MODE")
if [[ $host == 127.* || $host == localhost || $host == ::1 ]]; then
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}
  settings+=("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=$RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
fi
project=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -x $project/.venv/bin/ray ]]; then
  export PATH="$project/.venv/bin:$PATH"
fi

python=$(command -v python3 || command -v python)
port_free() {  # exit 0 when nothing listens on port $1 (on any address: binding them all fails then)
  "$python" -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("", int(sys.argv[1])))' "$1" 2>/dev/null
}
free_ports() {  # $1 distinct ports nothing listens on now, on any address
  "$python" -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}
if ((!dry_run)); then
  for pair in "--port:$port" "--dashboard-port:$dashboard_port"; do
    if ! port_free "${pair#*:}"; then
      echo "start-head.sh: ${pair%%:*} ${pair#*:}: the port is in use (another Ray head?); give another with ${pair%%:*} N" >&2
      exit 2
    fi
  done
fi

cmd=(ray start --head --node-ip-address "$host" --port "$port" --dashboard-host "$host" --dashboard-port "$dashboard_port" --disable-usage-stats)
servers=(--dashboard-agent-listen-port --dashboard-agent-grpc-port --ray-client-server-port --metrics-export-port
         --runtime-env-agent-port --node-manager-port --object-manager-port)
read -r -a picked <<< "$(free_ports ${#servers[@]})"
for i in "${!servers[@]}"; do
  option=${servers[$i]}
  [[ " ${more[*]-} " == *" $option "* || " ${more[*]-} " == *" $option="* ]] || cmd+=("$option" "${picked[$i]}")
done
[[ -n $num_cpus ]] && cmd+=(--num-cpus "$num_cpus")
[[ -n $temp_dir ]] && cmd+=(--temp-dir "$temp_dir")
((block)) && cmd+=(--block)
cmd+=(${more[@]+"${more[@]}"})

if ((dry_run)); then
  printf '%q ' "${settings[@]}" "${cmd[@]}" | sed 's/ $//'
  echo
  exit 0
fi
if [[ $RAY_AUTH_MODE == token ]] && ! ray get-auth-token >/dev/null 2>&1; then
  ray get-auth-token --generate >/dev/null  # prints the token: keep it off the terminal and the logs
fi
echo "Jobs API and dashboard: http://$host:$dashboard_port  (RAY_AUTH_MODE=$RAY_AUTH_MODE; submit with RAY_AUTH_MODE=$RAY_AUTH_MODE tokenmill submit RECIPE --address http://$host:$dashboard_port --out DIR)"
exec "${cmd[@]}"
