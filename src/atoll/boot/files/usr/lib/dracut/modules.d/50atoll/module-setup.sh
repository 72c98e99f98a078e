#!/bin/bash
# dracut module: atoll's early-boot step (docs/boot.md). The pre-pivot hook
# makes the deployment named by atoll= the root file system at ${NEWROOT}.

check() {
    # Always included where installed: an atoll image boots nothing else.
    [ -x /usr/lib/atoll/prepare-root ] || return 1
    return 0
}

depends() {
    return 0
}

install() {
    inst_simple /usr/lib/atoll/prepare-root
    inst_multiple mount umount mkdir sleep
    inst_multiple -o reboot
    inst_hook pre-pivot 50 "$moddir/atoll-prepare-root.sh"
}
