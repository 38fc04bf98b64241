#!/bin/sh
# qemu-trad-dm.sh: a device model in POSIX shell, speaking the control channel the way
# qemu-traditional does, with Xen's C tools (xenstore-read, -write, -rm, -watch;
# Debian xenstore-utils).
#
# It runs under the Mini-OS layer, which brings the stubdomain's consoles and devices
# up and hands it the rest:
#
#   stubdomain_kernel  = "stubdom-minios"
#   stubdomain_cmdline = "/path/to/examples/qemu-trad-dm.sh"
#
# argv is [this, <dmargs words>] (the guest is "-d <G>"; a restore adds "-loadvm FILE");
# XENSTORED_PATH reaches xenstore as the stubdomain; STUBDOM_TARGET is the guest;
# STUBDOM_SAVE_FILE takes the saved state and STUBDOM_RESTORE_FILE gives it back.
# stdout and stderr are console 0 (the device model's log).
#
# The channel, as qemu-trad's xenstore_process_dm_command_event answers it:
# - command is read and deleted; its value matches every name it is a prefix of,
#   tried in qemu's order (save, continue, usb-add, usb-del, pci-rem, pci-ins);
# - pci-ins: parameter "0x%02x" (the devfn) then state "pci-inserted"; a refusal is
#   qemu's text in parameter only ("no free hotplug devfn", "wrong bdf or vdevfn");
# - pci-rem of function 0 of an inserted device: "pci-removed" (the simulated guest
#   ejects the slot at once); anything else writes nothing;
# - save: the state to STUBDOM_SAVE_FILE (a QEMU savevm stream), closed, then "paused";
#   continue: "running" again, if paused;
# - logdirty/cmd enable|disable is echoed into logdirty/ret (anything else is fatal);
# - a change under the guest's cpu directory is read (vcpu-set).
set -u

log() { echo "qemu-trad-dm.sh: $*" >&2; }

guest=""
loadvm=""
while [ $# -gt 0 ]; do
    case $1 in
        -d) [ $# -gt 1 ] && guest=$2 && shift ;;
        -loadvm) [ $# -gt 1 ] && loadvm=$2 && shift ;;
    esac
    shift
done
[ -n "$guest" ] || guest=${STUBDOM_TARGET:-}
case $guest in
    ''|*[!0-9]*) log "no guest: neither -d <domid> in the dmargs nor STUBDOM_TARGET"; exit 1 ;;
esac
dm=device-model/$guest
cpu=/local/domain/$guest/cpu

work=$(mktemp -d "${TMPDIR:-/tmp}/qemu-trad-dm.XXXXXX") || exit 1
events=$work/events
mkfifo "$events" || exit 1
watchers=""
trap 'kill $watchers 2>/dev/null; rm -rf "$work"' EXIT
trap 'exit 1' INT TERM
paused=0

# -- the hot-plug slots: one file per slot in use, holding the function's BB:DD.F -------

slot_free() { [ ! -e "$work/slot.$1" ]; }

# insert BDF VDEVFN|"": prints the devfn, or qemu's error text and returns 1
insert() {
    if [ -n "$2" ]; then
        devfn=$(printf '%d' "0x$2" 2>/dev/null) || { echo "wrong bdf or vdevfn"; return 1; }
        slot=$((devfn / 8))
        if [ "$devfn" -gt 255 ] || [ "$slot" -lt 4 ] || ! slot_free "$slot"; then
            echo "wrong bdf or vdevfn"; return 1
        fi
    else
        slot=4
        while [ "$slot" -lt 32 ] && ! slot_free "$slot"; do slot=$((slot + 1)); done
        [ "$slot" -lt 32 ] || { echo "no free hotplug devfn"; return 1; }
        devfn=$((slot * 8))
    fi
    echo "$1" > "$work/slot.$slot"
    printf '0x%02x\n' "$devfn"
}

hex='[0-9a-fA-F]'
bdf_pattern="$hex$hex$hex$hex:$hex$hex:$hex$hex.[0-7]"

pci_ins() {
    spec=${1%%,*}
    bdf=${spec%%@*}
    vdevfn=""
    [ "$bdf" = "$spec" ] || vdevfn=${spec#*@}
    # shellcheck disable=SC2254 # the pattern is meant to match
    case $bdf in
        $bdf_pattern) ;;
        *) xenstore-write "$dm/parameter" "wrong bdf or vdevfn"; return ;;
    esac
    if answer=$(insert "${bdf#*:}" "$vdevfn"); then
        xenstore-write "$dm/parameter" "$answer"
        xenstore-write "$dm/state" pci-inserted
        log "pci-ins $bdf at devfn $answer"
    else
        xenstore-write "$dm/parameter" "$answer"
        log "pci-ins $bdf refused: $answer"
    fi
}

pci_rem() {
    bdf=${1#*:}
    for f in "$work"/slot.*; do
        [ -e "$f" ] && [ "$(cat "$f")" = "$bdf" ] || continue
        case $bdf in
            *.0) rm -f "$f"; xenstore-write "$dm/state" pci-removed; log "pci-rem $bdf" ;;
            *) log "pci-rem $bdf: attempt to remove non-zero function" ;;
        esac
        return
    done
    log "pci-rem $bdf: no such device"
}

# -- save and restore -----------------------------------------------------------------

# A QEMU savevm stream: "QEVM", version 3, one FULL section "qemu-trad-sh" (id 0,
# instance 0, version 1) whose body is the slot table as text, then QEMU_VM_EOF.
# (check_dm_state_complete in src/stubdom/toolstack/savefile.py is what the toolstack
# accepts: the magic, version 3, a first START/FULL section with a printable idstr, and
# QEMU_VM_EOF as the last byte.)
save() {
    {
        printf 'QEVM\000\000\000\003\004\000\000\000\000\014qemu-trad-sh'
        printf '\000\000\000\000\000\000\000\001\n'
        for f in "$work"/slot.*; do
            [ -e "$f" ] && printf 'slot %s %s\n' "${f##*.}" "$(cat "$f")"
        done
        printf '\000'
    } > "$STUBDOM_SAVE_FILE" || { log "save: cannot write $STUBDOM_SAVE_FILE"; return; }
    paused=1
    xenstore-write "$dm/state" paused
    log "saved and paused"
}

restore() {
    cat "$STUBDOM_RESTORE_FILE" > "$work/restored" || { log "cannot read the saved state"; return; }
    if [ "$(dd if="$work/restored" bs=4 count=1 2>/dev/null)" != QEVM ]; then
        log "Error -22 while loading savevm file $loadvm"  # qemu goes on regardless
        return
    fi
    # Passed-through functions are not part of the state: the toolstack inserts them
    # again after the restore, as libxl does.  The slot table is only reported.
    slots=$(tr -d '\000' < "$work/restored" | grep -c '^slot ')
    log "restored from $loadvm ($slots passed-through functions at the save)"
}

# -- the channel ----------------------------------------------------------------------

# prefix NAME VALUE: whether the command VALUE selects NAME (qemu's strncmp quirk)
prefix() { case $1 in "$2"*) return 0 ;; esac; return 1; }

command_event() {
    command=$(xenstore-read "$dm/command" 2>/dev/null) || return 0
    xenstore-rm "$dm/command"
    for name in save continue usb-add usb-del pci-rem pci-ins; do
        prefix "$name" "$command" && break
        name=""
    done
    case $name in
        save) save ;;
        continue) [ "$paused" = 1 ] && paused=0 && xenstore-write "$dm/state" running ;;
        "") log "dm-command: unknown command\"$command\"" ;;
        *)
            parameter=$(xenstore-read "$dm/parameter" 2>/dev/null) || return 0
            case $name in
                usb-add) xenstore-write "$dm/state" usb-added ;;
                usb-del) xenstore-write "$dm/state" usb-deleted ;;
                pci-rem) pci_rem "$parameter" ;;
                pci-ins) pci_ins "$parameter" ;;
            esac ;;
    esac
}

logdirty_event() {
    cmd=$(xenstore-read "$dm/logdirty/cmd" 2>/dev/null) || return 0
    case $cmd in
        enable|disable) xenstore-write "$dm/logdirty/ret" "$cmd" ;;
        *) log "logdirty: unknown command \"$cmd\""; exit 1 ;;
    esac
}

for path in "$dm/command" "$dm/logdirty/cmd" "$cpu"; do
    xenstore-watch "$path" > "$events" &
    watchers="$watchers $!"
done
exec 3< "$events"
# Each watch fires once when it is set: three events, and all three are in place.
for _ in 1 2 3; do read -r _ <&3 || exit 1; done
[ -z "$loadvm" ] || restore
xenstore-write "$dm/state" running
log "running for guest $guest"
command_event
while read -r path <&3; do
    case $path in  # a relative watch may be reported either way
        "$dm/command"|*/"$dm/command") command_event ;;
        "$dm/logdirty/cmd"|*/"$dm/logdirty/cmd") logdirty_event ;;
        "$cpu"/*) xenstore-read "$path" > /dev/null 2>&1 && log "vcpu-set: $path" ;;
    esac
done
log "lost the xenstore watches"
exit 1
