#!/usr/bin/env bash
# tlflax launcher. Creates .venv when missing, installs tlflax into it (again whenever
# pyproject.toml or TLFLAX_ACCEL changes, and with the test extras for `test`), then runs the package, its tests, or a cloud launch.
#   ./launch.sh local [FLAGS...]   python -m tlflax.main FLAGS... on every device of this machine
#   ./launch.sh test [PYTEST...]   the test suite (what CI runs); a path or -k selects tests
#   ./launch.sh install            only the set-up (what running needs; `test` adds the test extras)
#   ./launch.sh tpu --name=VM --zone=Z [--project=P] [--dry-run] -- FLAGS...
#   ./launch.sh slurm [--nodes=N] [--gpus-per-node=G] [--time=T] [--partition=P] [--dry-run] -- FLAGS...
# TLFLAX_ACCEL=cpu|cuda12|cuda13|tpu picks the jax build that is installed (default cpu).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${TLFLAX_VENV:-.venv}
ACCEL=${TLFLAX_ACCEL:-cpu}

usage() {
  cat >&2 <<'EOF'
usage: ./launch.sh local [--mode=MODE --config=NAME|FILE --workdir=DIR ...]
       ./launch.sh test [PYTEST ARGS...]
       ./launch.sh install
       ./launch.sh tpu --name=VM --zone=ZONE [--project=P] [--dry-run] -- [FLAGS...]
       ./launch.sh slurm [--nodes=N] [--gpus-per-node=G] [--time=T] [--partition=P] [--dry-run] -- [FLAGS...]
TLFLAX_ACCEL=cpu|cuda12|cuda13|tpu selects the jax build (default cpu).
EOF
}

die() {
  echo "launch.sh: error: $*" >&2
  exit 2
}

# One argument quoted for a POSIX shell: as it is when it is safe, else in single quotes.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Every argument quoted, space-separated.
quote_all() {
  local out="" a
  for a in "$@"; do out+="${out:+ }$(q "$a")"; done
  printf '%s' "$out"
}

# Creates the venv when missing and installs tlflax into it with the extras a command needs:
# `local` and `install` what running needs (plus the jax build of TLFLAX_ACCEL), `test` the test
# extras too. A stamp records what was installed; it is done again when pyproject.toml or
# TLFLAX_ACCEL changes, or when `test` finds only the running set.
setup() {
  local purpose=$1
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "launch.sh: error: tlflax needs python3 >= 3.11 on PATH (jax 0.10 and later do)" >&2
    exit 2
  fi
  local extras
  case "$ACCEL" in
    cpu) extras="" ;;
    cuda12|cuda13|tpu) extras="$ACCEL" ;;
    *) die "TLFLAX_ACCEL=$ACCEL is not one of cpu, cuda12, cuda13, tpu" ;;
  esac
  [ "$purpose" = test ] && extras="test${extras:+,$extras}"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.tlflax-installed" want have
  want="$(sha256sum pyproject.toml | cut -d' ' -f1) $ACCEL"
  have=$(cat "$stamp" 2>/dev/null || true)
  # A test installation serves running too; a running one lacks the test extras.
  if [ "$have" != "$want run" ] && [ "$have" != "$want test" ] || \
     { [ "$purpose" = test ] && [ "$have" != "$want test" ]; }; then
    echo "launch.sh: installing tlflax${extras:+[$extras]} and its dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".${extras:+[$extras]}"
    if [ "$purpose" = test ]; then echo "$want test" > "$stamp"; else echo "$want run" > "$stamp"; fi
  fi
  if [ "$ACCEL" = cpu ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "launch.sh: note: this machine has an NVIDIA GPU but TLFLAX_ACCEL=cpu; set" \
         "TLFLAX_ACCEL=cuda12 (or cuda13, to match the driver) to train on it" >&2
  fi
  export TLFLAX_ACCEL=$ACCEL
}

# Runs a command, or with --dry-run prints it, quoted, and runs nothing.
DRY=0
run() {
  if [ "$DRY" = 1 ]; then
    quote_all "$@"
    echo
  else
    "$@"
  fi
}

# Copies this working tree (tracked and untracked files git does not ignore) to every worker of
# a Cloud TPU VM and starts the same command on all of them; jax.distributed joins them.
tpu_launch() {
  local name="" zone="" project=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --name=*) name=${1#*=} ;;
      --zone=*) zone=${1#*=} ;;
      --project=*) project=${1#*=} ;;
      --dry-run) DRY=1 ;;
      --) shift; break ;;
      *) die "unknown tpu option $1: use --name=VM --zone=ZONE [--project=P] [--dry-run] -- FLAGS..." ;;
    esac
    shift
  done
  if [ -z "$name" ] || [ -z "$zone" ]; then
    die "tpu needs --name=VM and --zone=ZONE (and -- before tlflax's flags)"
  fi
  local gcloud=(--zone="$zone" --worker=all)
  [ -z "$project" ] || gcloud+=(--project="$project")
  local archive="${TMPDIR:-/tmp}/tlflax-$$.tgz"
  local remote="mkdir -p ~/tlflax && tar -xzf ~/tlflax.tgz -C ~/tlflax && cd ~/tlflax"
  remote+=" && TLFLAX_ACCEL=tpu ./launch.sh local --distributed"
  [ $# -eq 0 ] || remote+=" $(quote_all "$@")"
  if [ "$DRY" = 1 ]; then
    echo "git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf $(q "$archive")"
  else
    git rev-parse --git-dir >/dev/null 2>&1 || die "tpu copies this git checkout: run it from one"
    git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf "$archive"
  fi
  run gcloud compute tpus tpu-vm scp "$archive" "$name:~/tlflax.tgz" "${gcloud[@]}"
  run gcloud compute tpus tpu-vm ssh "$name" "${gcloud[@]}" --command="$remote"
}

# Writes an sbatch script that starts one tlflax process per node (each uses all GPUs of its
# node; jax.distributed takes the coordinator from the SLURM environment) and submits it.
slurm_launch() {
  local nodes=1 gpus=1 time=01:00:00 partition=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes=*) nodes=${1#*=} ;;
      --gpus-per-node=*) gpus=${1#*=} ;;
      --time=*) time=${1#*=} ;;
      --partition=*) partition=${1#*=} ;;
      --dry-run) DRY=1 ;;
      --) shift; break ;;
      *) die "unknown slurm option $1: use [--nodes=N] [--gpus-per-node=G] [--time=T] [--partition=P] [--dry-run] -- FLAGS..." ;;
    esac
    shift
  done
  [[ $nodes =~ ^[1-9][0-9]*$ && $gpus =~ ^[0-9]+$ ]] || die "--nodes must be >= 1 and --gpus-per-node >= 0"
  local accel=${TLFLAX_ACCEL:-cuda12}
  local script
  script=$(
    echo "#!/usr/bin/env bash"
    echo "#SBATCH --job-name=tlflax"
    echo "#SBATCH --nodes=$nodes"
    echo "#SBATCH --ntasks-per-node=1"
    [ "$gpus" = 0 ] || echo "#SBATCH --gpus-per-node=$gpus"
    echo "#SBATCH --time=$time"
    [ -z "$partition" ] || echo "#SBATCH --partition=$partition"
    echo "#SBATCH --output=$(q "$PWD/slurm/tlflax-%j.out")"
    echo "set -euo pipefail"
    echo "cd $(q "$PWD")"
    echo "export TLFLAX_ACCEL=$(q "$accel")"
    echo "./launch.sh install  # once, before the processes start, so they do not race on .venv"
    echo "srun --ntasks-per-node=1 ./launch.sh local --distributed $(quote_all "$@")"
  )
  local file
  file="slurm/tlflax-$(date +%Y%m%d-%H%M%S).sbatch"
  if [ "$DRY" = 1 ]; then
    echo "# $file"
    echo "$script"
  else
    command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run ./launch.sh slurm on a SLURM login node"
    mkdir -p slurm
    echo "$script" > "$file"
  fi
  run sbatch "$file"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  local) setup run; exec "$VENV/bin/python" -m tlflax.main "$@" ;;
  # Test files in parallel, one worker per core (at most 4): the suite is half compilation and
  # subprocess start-up, which one process leaves a core idle for. With no path among the
  # arguments pytest runs pyproject.toml's testpaths (tests/); a path or -k selects.
  test) setup test; exec "$VENV/bin/python" -m pytest -n auto --maxprocesses=4 --dist loadfile "$@" ;;
  install) setup run ;;
  tpu) tpu_launch "$@" ;;
  slurm) slurm_launch "$@" ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
