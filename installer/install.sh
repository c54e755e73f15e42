#!/bin/sh
# Installs ollama-appliance (one self-contained `ollama` binary) on Linux, amd64 or arm64, and sets it
# up as the `ollama` systemd service, the way Ollama's own install.sh does.
#
#   curl -fsSL https://github.com/ollama-appliance/ollama-appliance/releases/latest/download/install.sh | sh
#   curl -fsSL .../install.sh | sh -s -- --host 0.0.0.0 --models /srv/ollama/models
#   sudo sh install.sh --from ./release          # offline: a folder with the .tgz files + sha256sum.txt
#
# `sh install.sh --help` lists the options; installer/README.md explains the choices.
#
# Everything is a function and only the last line runs anything, so a download cut short does nothing.

# The release location. A placeholder until the project publishes releases: override it with
# OLLAMA_DOWNLOAD_URL (https://, http:// or file://) or install offline with --from.
default_download_url() {
    if [ -n "${OLLAMA_VERSION:-}" ]; then
        echo "https://github.com/ollama-appliance/ollama-appliance/releases/download/v${OLLAMA_VERSION#v}"
    else
        echo "https://github.com/ollama-appliance/ollama-appliance/releases/latest/download"
    fi
}

usage() {
    cat <<'EOF'
Install ollama-appliance and its systemd service.

Usage: install.sh [options]          (piped: curl -fsSL URL/install.sh | sh -s -- [options])

  --from PATH               offline install: a folder holding ollama-linux-<arch>[-cuda|-rocm].tgz
                            and sha256sum.txt, or one of those .tgz files (sha256sum.txt next to it)
  --flavor cpu|cuda|rocm    install this build instead of the one matching the detected GPU
  --host ADDR               OLLAMA_HOST, the listen address (e.g. 0.0.0.0 for remote access)
  --origins LIST            OLLAMA_ORIGINS, extra allowed browser origins (e.g. "http://nas:3000")
  --models DIR              OLLAMA_MODELS, the models folder (created, owned by ollama:ollama)
  --max-loaded-models N     OLLAMA_MAX_LOADED_MODELS
  --num-parallel N          OLLAMA_NUM_PARALLEL
  --keep-alive DURATION     OLLAMA_KEEP_ALIVE (e.g. 10m, 1h, -1 for forever)
  --api-keys FILE|LIST      OLLAMA_API_KEYS: clients must send one of these keys. Best a key file, one
                            key a line, readable by root and ollama only (e.g. /etc/ollama/api-keys);
                            a comma-separated list works too but is then readable in override.conf
  --no-start                install and enable the service, but do not (re)start it
  -h, --help                this text

The same settings can be given as environment variables (OLLAMA_HOST=0.0.0.0 sh install.sh); options
win. They go into /etc/systemd/system/ollama.service.d/override.conf, in a block the installer owns;
settings not given again are kept, an empty value (--host=) removes one, and lines you add outside the
block are left alone.

Environment: OLLAMA_VERSION (a release, default the latest), OLLAMA_DOWNLOAD_URL (another release
location: https://..., http://..., file:///folder), HSA_OVERRIDE_GFX_VERSION (instead of the detected
AMD override), OLLAMA_NO_START=1 (as --no-start).
EOF
}

say() { printf '>>> %s\n' "$*" >&2; }
warn() { printf '%sWARNING:%s %s\n' "$RED" "$PLAIN" "$*" >&2; }
fail() {
    printf '%sERROR:%s %s\n' "$RED" "$PLAIN" "$*" >&2
    exit 1
}
available() { command -v "$1" >/dev/null 2>&1; }

# --- settings: options and environment ----------------------------------------------------------

MANAGED_VARS="OLLAMA_HOST OLLAMA_ORIGINS OLLAMA_MODELS OLLAMA_MAX_LOADED_MODELS OLLAMA_NUM_PARALLEL OLLAMA_KEEP_ALIVE OLLAMA_API_KEYS"

# Remember a setting given on this run: GIVEN_<VAR>=1 and VALUE_<VAR>=<value> ("" means remove it).
give() {
    eval "GIVEN_$1=1"
    eval "VALUE_$1=\$2"
}
given() { eval "[ -n \"\${GIVEN_$1:-}\" ]"; }
given_value() { eval "printf '%s' \"\${VALUE_$1:-}\""; }

read_env_settings() {
    for var in $MANAGED_VARS; do
        if eval "[ -n \"\${$var+set}\" ]"; then
            eval "give $var \"\${$var}\""
        fi
    done
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            -h | --help)
                usage
                exit 0
                ;;
            --no-start)
                NO_START=1
                shift
                continue
                ;;
            --*=*)
                opt=${1%%=*}
                val=${1#*=}
                shift
                ;;
            --from | --flavor | --host | --origins | --models | --max-loaded-models | --num-parallel | --keep-alive | --api-keys)
                [ $# -ge 2 ] || fail "$1 needs a value (see --help)"
                opt=$1
                val=$2
                shift 2
                ;;
            *) fail "unknown option: $1 (see --help)" ;;
        esac
        case "$opt" in
            --from) FROM=$val ;;
            --flavor) FLAVOR_CHOICE=$val ;;
            --host) give OLLAMA_HOST "$val" ;;
            --origins) give OLLAMA_ORIGINS "$val" ;;
            --models) give OLLAMA_MODELS "$val" ;;
            --max-loaded-models) give OLLAMA_MAX_LOADED_MODELS "$val" ;;
            --num-parallel) give OLLAMA_NUM_PARALLEL "$val" ;;
            --keep-alive) give OLLAMA_KEEP_ALIVE "$val" ;;
            --api-keys) give OLLAMA_API_KEYS "$val" ;;
            *) fail "unknown option: $opt (see --help)" ;;
        esac
    done
}

# Values end up inside Environment="..." lines of a unit file: only characters that need no quoting
# there are accepted (no quotes, backslashes, %, whitespace).
check_value() { # name, extended regex, value
    case "$3" in
        *"$NL"*) fail "$1 must be a single line" ;;
    esac
    printf '%s' "$3" | grep -Eqx -- "$2" || fail "invalid $1: '$3'"
}

# OLLAMA_API_KEYS: a key file (an absolute path, as the server tells them apart) or keys separated by
# commas, none starting with "/". Inline keys end up in a world-readable override.conf: warn.
check_api_keys() {
    case "$1" in
        /*)
            check_value "OLLAMA_API_KEYS (a key file's absolute path without spaces or quotes)" '/[A-Za-z0-9._/+@-]*' "$1"
            [ -f "$1" ] || warn "the API key file $1 does not exist yet: the service will not start until it does"
            ;;
        *)
            check_value "OLLAMA_API_KEYS (keys of letters, digits and ._~+=/- separated by commas)" \
                '[A-Za-z0-9._+=-][A-Za-z0-9._~+=/-]*(,[A-Za-z0-9._+=-][A-Za-z0-9._~+=/-]*)*' "$1"
            warn "OLLAMA_API_KEYS lists its keys in /etc/systemd/system/ollama.service.d/override.conf, which every user can read: a key file is safer (--api-keys /etc/ollama/api-keys)"
            ;;
    esac
}

# Folders that must never become the ollama user's.
system_folder() {
    case "${1%/}" in
        "" | /bin | /boot | /dev | /dev/* | /etc | /home | /lib | /lib64 | /media | /mnt | /opt | /proc | /proc/* | \
            /root | /run | /sbin | /srv | /sys | /sys/* | /tmp | /usr | /usr/bin | /usr/lib | /usr/local | \
            /usr/local/bin | /usr/sbin | /usr/share | /var | /var/lib) return 0 ;;
    esac
    return 1
}

validate_settings() {
    for var in $MANAGED_VARS; do
        given "$var" || continue
        value=$(given_value "$var")
        [ -n "$value" ] || continue
        case "$var" in
            OLLAMA_HOST) check_value "$var" '[A-Za-z0-9._:/@-]*|[A-Za-z]+://\[[0-9A-Fa-f:.]+\](:[0-9]+)?/?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?' "$value" ;;
            OLLAMA_ORIGINS) check_value "$var" '[A-Za-z0-9._:/*,+@-]+' "$value" ;;
            OLLAMA_MODELS)
                check_value "$var (an absolute path without spaces or quotes)" '/[A-Za-z0-9._/+@-]*' "$value"
                if system_folder "$value"; then
                    fail "refusing $value as the models folder: it would become owned by the ollama user"
                fi
                ;;
            OLLAMA_MAX_LOADED_MODELS | OLLAMA_NUM_PARALLEL) check_value "$var (a whole number)" '[0-9]+' "$value" ;;
            OLLAMA_KEEP_ALIVE) check_value "$var (e.g. 5m, 1h30m, 0, -1)" '-?([0-9]+(\.[0-9]*)?(ns|us|ms|s|m|h)?)+' "$value" ;;
            OLLAMA_API_KEYS) check_api_keys "$value" ;;
        esac
    done
    if [ -n "${HSA_OVERRIDE_GFX_VERSION:-}" ]; then
        check_value HSA_OVERRIDE_GFX_VERSION '[0-9]+\.[0-9]+\.[0-9]+' "$HSA_OVERRIDE_GFX_VERSION"
    fi
    case "${FLAVOR_CHOICE:-}" in
        "" | cpu | cuda | rocm) ;;
        *) fail "--flavor must be cpu, cuda or rocm, not '$FLAVOR_CHOICE'" ;;
    esac
}

# --- the machine ----------------------------------------------------------------------------------

detect_platform() {
    [ "$(uname -s)" = Linux ] || fail "this installer is for Linux only"
    machine=$(uname -m)
    case "$machine" in
        x86_64 | amd64) ARCH=amd64 ;;
        aarch64 | arm64) ARCH=arm64 ;;
        *) fail "unsupported architecture: $machine. ollama-appliance ships builds for x86-64 (amd64) and 64-bit Arm (arm64) only." ;;
    esac
    IS_WSL2=false
    kernel=$(uname -r)
    case "$kernel" in
        *icrosoft*WSL2 | *icrosoft*wsl2) IS_WSL2=true ;;
        *icrosoft*)
            fail "WSL1 is not supported (kernel $kernel): ollama needs WSL2. In Windows PowerShell run 'wsl --set-version <distro> 2' ('wsl -l -v' lists your distros), then run this installer again inside it."
            ;;
    esac
}

nvidia_smi_works() {
    # Inside WSL2 the passthrough nvidia-smi lives in /usr/lib/wsl/lib, which sudo drops from PATH.
    if available nvidia-smi && nvidia-smi >/dev/null 2>&1; then
        return 0
    fi
    [ -x /usr/lib/wsl/lib/nvidia-smi ] && /usr/lib/wsl/lib/nvidia-smi >/dev/null 2>&1
}

# A display-class (PCI class 03xx) device of this vendor ("10de", "1002") on the PCI bus.
pci_display() {
    available lspci || return 1
    lspci -n -d "$1:" 2>/dev/null | awk '$2 ~ /^03/ { found = 1 } END { exit !found }'
}

lshw_display() {
    available lshw || return 1
    $SUDO lshw -c display -numeric -disable network 2>/dev/null | grep -qi "vendor: .*\[$1\]"
}

# One line per AMD GPU the amdgpu driver exposes through KFD, in node order (the order ROCm numbers
# them, and the index of HSA_OVERRIDE_GFX_VERSION_<n>): "<gfx target> <major.minor.stepping>".
# KFD writes gfx_target_version as major*10000 + minor*100 + stepping, so 110003 is gfx1103 = 11.0.3.
kfd_gpus() {
    nodes=/sys/class/kfd/kfd/topology/nodes
    [ -d "$nodes" ] || return 0
    for dir in "$nodes"/*; do
        node=${dir##*/}
        case "$node" in
            "" | *[!0-9]*) ;;
            *) echo "$node" ;;
        esac
    done | sort -n | while read -r node; do
        awk '$1 == "simd_count" { simd = $2 } $1 == "vendor_id" { vendor = $2 } $1 == "gfx_target_version" { v = $2 }
            END {
                major = int(v / 10000); minor = int(v / 100) % 100; step = v % 100
                if (simd > 0 && vendor == 4098 && major > 0 && minor < 16 && step < 16)
                    printf "gfx%d%x%x %d.%d.%d\n", major, minor, step, major, minor, step
            }' "$nodes/$node/properties" 2>/dev/null || :
    done
}

# The HSA_OVERRIDE_GFX_VERSION that lets a gfx target ROCm has no kernels for run as a same-ISA
# sibling it has. Keep in step with _GFX_OVERRIDES in appliance/engine/gpu.py: tests/installer
# checks that both give the same answer for every target.
rocm_gfx_override() {
    case "$1" in
        gfx1031 | gfx1032 | gfx1033 | gfx1034 | gfx1035 | gfx1036) echo 10.3.0 ;;
        gfx1103) echo 11.0.0 ;;
        gfx90c) echo 9.0.0 ;;
    esac
}

# gfx targets ROCm (as built for Ollama) has kernels for: ROCM_SUPPORTED_GFX in appliance/engine/gpu.py.
rocm_supported() {
    case "$1" in
        gfx908 | gfx90a | gfx942 | gfx950 | gfx1030 | gfx1100 | gfx1101 | gfx1102 | gfx1150 | gfx1151 | gfx1200 | gfx1201) return 0 ;;
    esac
    return 1
}

# Sets HSA_LINES ("VAR=VALUE" lines) for the AMD GPUs in $1 (kfd_gpus output). One variable when every
# GPU ends up as the same target, else one per GPU that needs it (HSA_OVERRIDE_GFX_VERSION_<index>).
plan_amd_overrides() {
    HSA_LINES=
    index=0
    first=
    mixed=false
    per_gpu=
    while read -r gfx version; do
        [ -n "$gfx" ] || continue
        override=$(rocm_gfx_override "$gfx")
        if [ -n "$override" ]; then
            say "AMD GPU $index is $gfx, which ROCm does not support out of the box: running it as $override (HSA_OVERRIDE_GFX_VERSION)"
            per_gpu="${per_gpu}HSA_OVERRIDE_GFX_VERSION_$index=$override$NL"
        elif rocm_supported "$gfx"; then
            say "AMD GPU $index is $gfx"
        else
            warn "AMD GPU $index is $gfx, which ROCm does not support and no override is known for: Ollama will not use it"
        fi
        effective=${override:-$version}
        if [ -z "$first" ]; then
            first=$effective
        elif [ "$effective" != "$first" ]; then
            mixed=true
        fi
        index=$((index + 1))
    done <<EOF
$1
EOF
    [ -n "$per_gpu" ] || return 0
    if [ "$mixed" = true ]; then
        HSA_LINES=${per_gpu%"$NL"}
    else
        HSA_LINES="HSA_OVERRIDE_GFX_VERSION=$first"
    fi
}

# Sets FLAVOR (cpu, cuda, rocm) for this machine, HSA_LINES for AMD targets that need an override and
# NVIDIA_MODPROBE when the service should load nvidia-uvm before it starts; --flavor and
# HSA_OVERRIDE_GFX_VERSION given by the user win over what was detected.
detect_gpu() {
    detect_gpu_hardware
    if [ -n "${HSA_OVERRIDE_GFX_VERSION:-}" ]; then
        HSA_LINES="HSA_OVERRIDE_GFX_VERSION=$HSA_OVERRIDE_GFX_VERSION"
    fi
    if [ -n "${FLAVOR_CHOICE:-}" ] && [ "$FLAVOR_CHOICE" != "$FLAVOR" ]; then
        say "Installing the $FLAVOR_CHOICE build as asked (detected: $FLAVOR)"
        FLAVOR=$FLAVOR_CHOICE
    fi
}

detect_gpu_hardware() {
    FLAVOR=cpu
    HSA_LINES=
    NVIDIA_MODPROBE=
    GPU_SUMMARY="No NVIDIA/AMD GPU detected. Ollama will run in CPU-only mode."
    if [ "$IS_WSL2" = true ]; then
        # WSL2 passes NVIDIA GPUs through to Linux, and only them; lspci sees virtual devices.
        if nvidia_smi_works; then
            FLAVOR=cuda
            GPU_SUMMARY="NVIDIA GPU ready (WSL2 passthrough)."
        else
            GPU_SUMMARY="No NVIDIA GPU passthrough found (nvidia-smi); under WSL2 only NVIDIA GPUs are used, through the Windows driver. Ollama will run in CPU-only mode."
        fi
        return 0
    fi
    if [ -f /etc/nv_tegra_release ]; then
        release=$(sed -n '1s/^# *\(R[0-9]*\).*/\1/p' /etc/nv_tegra_release)
        FLAVOR=cuda
        GPU_SUMMARY="NVIDIA Jetson (L4T ${release:-unknown release}) ready; its JetPack drivers are used as they are."
        return 0
    fi
    nvidia_hw=false
    if nvidia_smi_works; then
        nvidia_hw=true
        FLAVOR=cuda
        GPU_SUMMARY="NVIDIA GPU ready."
        for modprobe in /usr/bin/nvidia-modprobe /usr/sbin/nvidia-modprobe; do
            if [ -x "$modprobe" ]; then
                NVIDIA_MODPROBE=$modprobe
                break
            fi
        done
    elif pci_display 10de || lshw_display 10de; then
        nvidia_hw=true
        GPU_SUMMARY="NVIDIA GPU found without a working driver: Ollama will run in CPU-only mode."
        warn "NVIDIA GPU found, but no working NVIDIA driver (nvidia-smi fails or is missing). Installing the CPU build; install the driver (https://docs.nvidia.com/cuda/cuda-installation-guide-linux/), then run this installer again."
    fi
    amd_gpus=$(kfd_gpus)
    if [ -n "$amd_gpus" ]; then
        plan_amd_overrides "$amd_gpus"
        if [ "$nvidia_hw" = true ]; then
            say "An AMD GPU is present too; this build uses the NVIDIA one (--flavor rocm picks AMD)."
        else
            FLAVOR=rocm
            GPU_SUMMARY="AMD GPU ready."
        fi
    elif [ "$nvidia_hw" = false ] && { pci_display 1002 || lshw_display 1002; }; then
        GPU_SUMMARY="AMD GPU found without a compute driver: Ollama will run in CPU-only mode."
        warn "AMD GPU found, but the amdgpu driver exposes no compute device (/sys/class/kfd). Installing the CPU build; load a recent amdgpu driver, then run this installer again."
    fi
}

# --- the release ----------------------------------------------------------------------------------

# Sets SOURCE (a folder or URL holding the release), and TARBALL when one artifact was named.
locate_release() {
    TARBALL=
    location=${FROM:-${OLLAMA_DOWNLOAD_URL:-}}
    if [ -n "$location" ] && [ -n "${OLLAMA_VERSION:-}" ]; then
        warn "OLLAMA_VERSION is ignored with --from or OLLAMA_DOWNLOAD_URL: they name the release themselves"
    fi
    location=${location:-$(default_download_url)}
    case "$location" in
        file://*) location=${location#file://} ;;
        http://* | https://*)
            SOURCE=${location%/}
            return 0
            ;;
        *://*) fail "unsupported download location: $location (use https://, http:// or file://)" ;;
    esac
    if [ -d "$location" ]; then
        SOURCE=${location%/}
    elif [ -f "$location" ]; then
        SOURCE=$(dirname "$location")
        TARBALL=$(basename "$location")
        case "$TARBALL" in
            ollama-linux-amd64* | ollama-linux-arm64*)
                case "$TARBALL" in
                    ollama-linux-"$ARCH"*) ;;
                    *) fail "$TARBALL is not a build for this machine ($ARCH)" ;;
                esac
                ;;
        esac
    else
        fail "no such folder or file: $location"
    fi
}

fetch() { # source-relative name, destination file
    case "$SOURCE" in
        http://* | https://*)
            if available curl; then
                if [ -t 2 ]; then progress=--progress-bar; else progress=--silent; fi
                curl --fail --show-error --location $progress -o "$2" "$SOURCE/$1"
            elif available wget; then
                wget -q -O "$2" "$SOURCE/$1"
            else
                fail "curl or wget is needed to download ollama (or install offline with --from)"
            fi
            ;;
        *) [ -f "$SOURCE/$1" ] && cp "$SOURCE/$1" "$2" ;;
    esac
}

# The sha256 sha256sum.txt gives for a file name ("<hex>  name" or "<hex> *name").
listed_sha256() {
    awk -v name="$1" '($2 == name || $2 == "*" name) && $1 ~ /^[0-9a-fA-F]+$/ && length($1) == 64 { print tolower($1); exit }' \
        "$TEMP_DIR/sha256sum.txt"
}

# Downloads (or copies) the artifact for FLAVOR, falling back to the CPU build when the release has no
# GPU build; verifies it against sha256sum.txt and unpacks bin/ollama into $TEMP_DIR/pkg. Sets ARTIFACT.
fetch_artifact() {
    fetch sha256sum.txt "$TEMP_DIR/sha256sum.txt" ||
        fail "cannot read sha256sum.txt from $SOURCE: nothing to verify the download against"
    if [ -n "$TARBALL" ]; then
        candidates=$TARBALL
    elif [ "$FLAVOR" = cpu ]; then
        candidates="ollama-linux-$ARCH.tgz"
    else
        candidates="ollama-linux-$ARCH-$FLAVOR.tgz ollama-linux-$ARCH.tgz"
    fi
    ARTIFACT=
    for name in $candidates; do
        expected=$(listed_sha256 "$name")
        if [ -n "$expected" ]; then
            say "Downloading $name"
            if fetch "$name" "$TEMP_DIR/$name"; then
                ARTIFACT=$name
                break
            fi
        fi
        [ -n "$TARBALL" ] && fail "$name is not listed in $SOURCE/sha256sum.txt, or cannot be read"
        if [ "$name" != "ollama-linux-$ARCH.tgz" ]; then
            warn "the release at $SOURCE has no $FLAVOR build ($name); installing the CPU build, which will not use the GPU"
            GPU_SUMMARY="GPU found, but the release has no $FLAVOR build: Ollama will run in CPU-only mode."
            FLAVOR=cpu
        fi
    done
    [ -n "$ARTIFACT" ] || fail "the release at $SOURCE has no ollama-linux-$ARCH.tgz (or it is not listed in sha256sum.txt)"
    actual=$(sha256sum "$TEMP_DIR/$ARTIFACT" | awk '{ print $1 }')
    if [ "$actual" != "$expected" ]; then
        fail "checksum mismatch for $ARTIFACT: sha256sum.txt says $expected, the file is $actual. The download is corrupt or was tampered with; nothing was installed."
    fi
    say "Verified $ARTIFACT (sha256 $actual)"
    mkdir "$TEMP_DIR/pkg"
    tar -xzf "$TEMP_DIR/$ARTIFACT" -C "$TEMP_DIR/pkg" bin/ollama 2>/dev/null ||
        tar -xzf "$TEMP_DIR/$ARTIFACT" -C "$TEMP_DIR/pkg" ./bin/ollama 2>/dev/null ||
        fail "$ARTIFACT holds no bin/ollama"
    if [ ! -f "$TEMP_DIR/pkg/bin/ollama" ] || [ -L "$TEMP_DIR/pkg/bin/ollama" ]; then
        fail "bin/ollama in $ARTIFACT is not a regular file"
    fi
}

# --- the binary -----------------------------------------------------------------------------------

install_binary() {
    BINDIR=
    for dir in /usr/local/bin /usr/bin /bin; do
        case ":$PATH:" in
            *":$dir:"*)
                BINDIR=$dir
                break
                ;;
        esac
    done
    BINDIR=${BINDIR:-/usr/local/bin}
    say "Installing ollama to $BINDIR"
    $SUDO install -o0 -g0 -m755 -d "$BINDIR"
    # A new file renamed over the old one: a running server keeps its binary until it restarts.
    $SUDO install -o0 -g0 -m755 "$TEMP_DIR/pkg/bin/ollama" "$BINDIR/.ollama.new"
    $SUDO mv -f "$BINDIR/.ollama.new" "$BINDIR/ollama"
}

# --- the service ----------------------------------------------------------------------------------

# systemd/ollama.service, verbatim (tests/installer checks they are equal); fill_unit adapts it.
unit_template() {
    cat <<'OLLAMA_SERVICE_UNIT'
# ollama-appliance: /etc/systemd/system/ollama.service, written by install.sh (which embeds this file
# and fills in ExecStart and PATH). Re-running the installer rewrites it: put your settings in
# /etc/systemd/system/ollama.service.d/override.conf (`sudo systemctl edit ollama`) instead.
[Unit]
Description=Ollama Service (ollama-appliance)
Documentation=https://github.com/ollama-appliance/ollama-appliance
After=network-online.target

[Service]
ExecStart=/usr/local/bin/ollama serve
User=ollama
Group=ollama
Restart=always
RestartSec=3
Environment="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Hardening that leaves the GPUs alone: no PrivateDevices=, DevicePolicy= or DeviceAllow=, so
# /dev/nvidia*, /dev/kfd and /dev/dri stay reachable (the ollama user is in the render and video
# groups), and no MemoryDenyWriteExecute= (GPU runtimes and libffi callbacks need executable memory).
NoNewPrivileges=true
PrivateTmp=true
ProtectKernelModules=true
ProtectControlGroups=true
RestrictSUIDSGID=true
LockPersonality=true
# /usr, /boot, /etc, /home, /root and /run/user are read-only. "full" rather than "strict", so a models
# folder set by hand elsewhere (/srv, /data, /mnt) keeps working; for the models folder it knows of,
# the installer adds a ReadWritePaths= line to the override.
ProtectSystem=full
ProtectHome=read-only
ReadWritePaths=-/usr/share/ollama

[Install]
WantedBy=multi-user.target
OLLAMA_SERVICE_UNIT
}

# The service gets the installer's PATH, as with Ollama (CUDA or ROCm tools in /opt, /usr/local/cuda),
# minus entries that are relative or would need quoting in a unit file.
service_path() {
    kept=
    old_ifs=$IFS
    IFS=:
    for entry in $PATH; do
        case "$entry" in
            /*) printf '%s' "$entry" | grep -Eqx '[A-Za-z0-9._/+@-]+' && kept="$kept${kept:+:}$entry" ;;
        esac
    done
    IFS=$old_ifs
    printf '%s' "${kept:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}"
}

fill_unit() {
    path=$(service_path)
    unit_template | while IFS= read -r line; do
        case "$line" in
            "ExecStart=/usr/local/bin/ollama serve") printf 'ExecStart=%s/ollama serve\n' "$BINDIR" ;;
            'Environment="PATH='*) printf 'Environment="PATH=%s"\n' "$path" ;;
            *) printf '%s\n' "$line" ;;
        esac
    done
}

ensure_user() {
    if ! id ollama >/dev/null 2>&1; then
        say "Creating ollama user..."
        $SUDO useradd -r -s /bin/false -U -m -d /usr/share/ollama ollama
    fi
    for group in render video; do
        if getent group "$group" >/dev/null 2>&1; then
            say "Adding ollama user to $group group..."
            $SUDO usermod -a -G "$group" ollama
        fi
    done
    if [ "$(id -u)" -ne 0 ]; then
        invoker=$(id -un)
    else
        invoker=${SUDO_USER:-}
    fi
    if [ -n "$invoker" ] && [ "$invoker" != root ]; then
        if id "$invoker" >/dev/null 2>&1; then
            say "Adding current user ($invoker) to ollama group..."
            $SUDO usermod -a -G ollama "$invoker"
        fi
    fi
}

OVERRIDE_BEGIN='# --- BEGIN ollama-appliance installer: rewritten by install.sh; add your own lines outside this block ---'
OVERRIDE_END='# --- END ollama-appliance installer ---'

# The value the Environment= lines on stdin give KEY (the last one wins, as in systemd); fails if none.
env_value() {
    awk -v key="$1" '
        /^[ \t]*Environment=/ {
            rest = $0
            sub(/^[ \t]*Environment=[ \t]*/, "", rest)
            if (rest == "") { found = 0; next }   # an empty assignment clears the list
            while (rest != "") {
                sub(/^[ \t]+/, "", rest)
                q = substr(rest, 1, 1)
                if (q == "\"" || q == "\047") {
                    rest = substr(rest, 2); end = index(rest, q); if (end == 0) end = length(rest) + 1
                    word = substr(rest, 1, end - 1); rest = substr(rest, end + 1)
                } else {
                    end = match(rest, /[ \t]/); if (end == 0) end = length(rest) + 1
                    word = substr(rest, 1, end - 1); rest = substr(rest, end)
                }
                if (index(word, key "=") == 1) { value = substr(word, length(key) + 2); found = 1 }
            }
        }
        END { if (found) print value; exit !found }'
}

# Splits the current override.conf into the user's own lines ($TEMP_DIR/override.user) and the
# installer's block ($TEMP_DIR/override.block).
split_override() {
    : >"$TEMP_DIR/override.user"
    : >"$TEMP_DIR/override.block"
    [ -f "$OVERRIDE" ] || return 0
    awk -v begin="${OVERRIDE_BEGIN%%:*}" -v end="$OVERRIDE_END" -v user="$TEMP_DIR/override.user" \
        -v block="$TEMP_DIR/override.block" '
        index($0, begin) == 1 { inside = 1; next }
        inside && index($0, end) == 1 { inside = 0; next }
        inside { print > block; next }
        { print > user }
        END { exit inside ? 3 : 0 }' "$OVERRIDE" || {
        cp "$OVERRIDE" "$TEMP_DIR/override.backup"
        $SUDO cp "$OVERRIDE" "$OVERRIDE.bak"
        warn "$OVERRIDE has an installer block without its end marker; kept a copy as $OVERRIDE.bak"
    }
}

# The installer's Environment= line for VAR: given now, else kept from the last run unless the user's
# own lines set VAR (theirs win then, unless VAR is given again now).
managed_line() {
    if given "$1"; then
        value=$(given_value "$1")
        if [ -n "$value" ] && env_value "$1" <"$TEMP_DIR/override.user" >/dev/null; then
            say "$1 is also set outside the installer block in $OVERRIDE; the value given now takes precedence"
        fi
    elif env_value "$1" <"$TEMP_DIR/override.user" >/dev/null; then
        return 0
    else
        value=$(env_value "$1" <"$TEMP_DIR/override.block" || :)
    fi
    [ -z "$value" ] || printf 'Environment="%s=%s"\n' "$1" "$value"
}

# Rewrites override.conf: the user's lines first, verbatim, then the installer's block. Sets MODELS_DIR
# and API_HOST to what the service will use.
write_override() {
    OVERRIDE_DIR=/etc/systemd/system/ollama.service.d
    OVERRIDE=$OVERRIDE_DIR/override.conf
    split_override
    settings=$TEMP_DIR/override.settings
    : >"$settings"
    for var in $MANAGED_VARS; do
        managed_line "$var" >>"$settings"
    done
    all_env=$(cat "$TEMP_DIR/override.user" "$settings")
    MODELS_DIR=$(printf '%s\n' "$all_env" | env_value OLLAMA_MODELS || :)
    API_HOST=$(printf '%s\n' "$all_env" | env_value OLLAMA_HOST || :)
    API_KEYS=$(printf '%s\n' "$all_env" | env_value OLLAMA_API_KEYS || :)
    if printf '%s' "$MODELS_DIR" | grep -Eqx '/[A-Za-z0-9._/+@-]*' && ! system_folder "$MODELS_DIR"; then
        echo "ReadWritePaths=-$MODELS_DIR" >>"$settings"
    fi
    if [ -n "$HSA_LINES" ]; then
        if grep -Eq '^[ \t]*Environment=.*HSA_OVERRIDE_GFX_VERSION' "$TEMP_DIR/override.user"; then
            say "Keeping your own HSA_OVERRIDE_GFX_VERSION from $OVERRIDE"
        else
            printf '%s\n' "$HSA_LINES" | while IFS= read -r line; do
                printf 'Environment="%s"\n' "$line"
            done >>"$settings"
        fi
    fi
    if [ -n "$NVIDIA_MODPROBE" ]; then
        # NoNewPrivileges= stops the setuid nvidia-modprobe that CUDA runs to create /dev/nvidia-uvm
        # (missing after boot or a suspend); "+" runs it as root before the service starts.
        echo "ExecStartPre=+-$NVIDIA_MODPROBE -u -c=0" >>"$settings"
    fi

    new=$TEMP_DIR/override.conf
    # The user's lines, without trailing blank lines.
    awk 'NF { while (blank > 0) { print ""; blank-- } print; next } { blank++ }' "$TEMP_DIR/override.user" >"$new"
    if [ -s "$settings" ]; then
        [ -s "$new" ] && echo >>"$new"
        {
            echo "$OVERRIDE_BEGIN"
            echo "[Service]"
            cat "$settings"
            echo "$OVERRIDE_END"
        } >>"$new"
    fi
    if [ -s "$new" ]; then
        say "Writing service settings to $OVERRIDE"
        $SUDO install -o0 -g0 -m755 -d "$OVERRIDE_DIR"
        $SUDO install -o0 -g0 -m644 "$new" "$OVERRIDE"
    elif [ -f "$OVERRIDE" ]; then
        $SUDO rm -f "$OVERRIDE"
    fi
}

# True when a folder holds nothing but Ollama's layout (blobs/, manifests/), or nothing at all.
only_models_layout() {
    for entry in "$1"/* "$1"/.[!.]* "$1"/..?*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        case "${entry##*/}" in
            blobs | manifests) ;;
            *) return 1 ;;
        esac
    done
    return 0
}

# A models folder the service can write: created if missing, its blobs/ and manifests/ (all Ollama
# writes there) owned by ollama:ollama, and the folder itself too unless it holds other files: a
# folder named by hand may be someone's home.
prepare_models_dir() {
    [ -n "$MODELS_DIR" ] || return 0
    case "$MODELS_DIR" in
        /*) ;;
        *)
            warn "OLLAMA_MODELS=$MODELS_DIR is not an absolute path: the service cannot use it"
            return 0
            ;;
    esac
    if system_folder "$MODELS_DIR"; then
        warn "OLLAMA_MODELS=$MODELS_DIR is a system folder: leaving its owner alone; choose a folder of its own"
        return 0
    fi
    if [ ! -d "$MODELS_DIR" ]; then
        say "Creating models folder $MODELS_DIR"
        $SUDO mkdir -p "$MODELS_DIR"
    fi
    if only_models_layout "$MODELS_DIR"; then
        $SUDO chown ollama:ollama "$MODELS_DIR"
    else
        say "$MODELS_DIR holds other files: it keeps its owner; its blobs/ and manifests/ become ollama's"
    fi
    for sub in blobs manifests; do
        $SUDO mkdir -p "$MODELS_DIR/$sub"
        $SUDO chown -R ollama:ollama "$MODELS_DIR/$sub"
    done
    if available runuser && ! $SUDO runuser -u ollama -- test -w "$MODELS_DIR/blobs" 2>/dev/null; then
        warn "the ollama user cannot reach $MODELS_DIR (a parent folder is closed to it); the service will fail to store models. Move the folder, or open its parents (chmod o+x)."
    fi
}

configure_service() {
    ensure_user
    say "Creating ollama systemd service..."
    fill_unit >"$TEMP_DIR/ollama.service"
    $SUDO install -o0 -g0 -m644 "$TEMP_DIR/ollama.service" /etc/systemd/system/ollama.service
    write_override
    prepare_models_dir
    state=$(systemctl is-system-running 2>/dev/null || :)
    case "$state" in
        running | degraded | starting | initializing)
            $SUDO systemctl daemon-reload
            $SUDO systemctl enable ollama
            if [ -n "${NO_START:-}" ]; then
                say "Not starting the ollama service (--no-start); start it with: sudo systemctl start ollama"
            else
                say "Enabling and starting ollama service..."
                $SUDO systemctl restart ollama
                SERVICE_STARTED=true
            fi
            ;;
        *)
            # Enabling works without a running systemd; the service starts once systemd boots.
            $SUDO systemctl enable ollama >/dev/null 2>&1 || :
            warn "systemd is not running (${state:-no answer}): the ollama service is installed and enabled, but not started."
            if [ "$IS_WSL2" = true ]; then
                warn "To run it under WSL2, enable systemd: put these two lines in /etc/wsl.conf, then run 'wsl --shutdown' in Windows and reopen the distro:"
                printf '    [boot]\n    systemd=true\n' >&2
                warn "Or start the server without systemd: 'ollama serve' (or wsl/ollama-wsl.sh start)."
            else
                warn "Start the server by hand with 'ollama serve'."
            fi
            ;;
    esac
}

# OLLAMA_HOST as the address the server listens on: host:port, default 127.0.0.1:11434.
api_address() {
    addr=${1:-127.0.0.1:11434}
    port=11434
    case "$addr" in
        http://*) port=80 ;;
        https://*) port=443 ;;
    esac
    addr=${addr#*://}
    addr=${addr%%/*}
    case "$addr" in
        "") addr="127.0.0.1:$port" ;;
        \[*\]:*) ;;
        \[*\]) addr="$addr:$port" ;;
        *:*:*) addr="[$addr]:$port" ;;
        :*) addr="0.0.0.0$addr" ;;
        *:*) ;;
        *) addr="$addr:$port" ;;
    esac
    printf '%s' "$addr"
}

# --- main -----------------------------------------------------------------------------------------

main() {
    set -eu
    NL='
'
    if [ -t 2 ]; then
        RED=$(printf '\033[1;31m')
        PLAIN=$(printf '\033[0m')
    else
        RED=
        PLAIN=
    fi
    FROM=
    FLAVOR_CHOICE=
    NO_START=${OLLAMA_NO_START:-}
    SERVICE_STARTED=false
    MODELS_DIR=
    read_env_settings
    parse_args "$@"
    validate_settings
    API_HOST=$(given_value OLLAMA_HOST)
    API_KEYS=$(given_value OLLAMA_API_KEYS)

    detect_platform
    SUDO=
    if [ "$(id -u)" -ne 0 ]; then
        available sudo || fail "this installer needs root: run it as root or install sudo"
        SUDO=sudo
    fi
    for tool in awk grep sed tar gzip sha256sum install mktemp id; do
        available "$tool" || fail "$tool is required but missing"
    done
    TEMP_DIR=$(mktemp -d)
    trap 'rm -rf "$TEMP_DIR"' EXIT
    trap 'exit 130' INT TERM HUP

    detect_gpu
    locate_release
    fetch_artifact
    install_binary

    if available systemctl; then
        configure_service
    else
        say "No systemd here: start the server by hand with 'ollama serve'"
    fi

    say "$GPU_SUMMARY"
    address=$(api_address "$API_HOST")
    case "$address" in
        0.0.0.0:* | \[::\]:*)
            if [ -n "$API_KEYS" ]; then
                say "The API listens on every network interface and asks clients for an API key (OLLAMA_API_KEYS)."
            else
                warn "the API listens on every network interface, without authentication: firewall port ${address##*:}, set API keys (--api-keys FILE) or put an authenticating proxy in front"
            fi
            ;;
    esac
    say 'Install complete. Run "ollama" from the command line.'
    if [ "$SERVICE_STARTED" = true ]; then
        say "The Ollama API is now available at $address."
    else
        say "Once started, the Ollama API will be available at $address."
    fi
}

# In braces: sh parses the whole group before running it, so even a cut inside this line runs nothing.
{ main "$@"; }
