#!/bin/sh
# dracut pre-pivot hook (module 50atoll): make the deployment named by atoll=
# the root file system at ${NEWROOT}. A deployment that is missing or
# incomplete is refused (prepare-root says why on stderr, which dracut sends to
# the console) and the machine reboots, so that the bootloader's counter moves
# on and falls back to the previous deployment.

# Mounts cannot be moved out of a shared parent; systemd in the initramfs
# makes them shared.
mount --make-rprivate /

if ! /usr/lib/atoll/prepare-root "${NEWROOT:?}"; then
    # Leave the root file system clean for the next try: read-only first (other
    # mount namespaces of the initramfs may hold it too), then unmounted.
    mount -o remount,ro "${NEWROOT}" 2>/dev/null
    umount "${NEWROOT}" 2>/dev/null
    # panic=N on the command line: wait N seconds, as initramfs-tools' hook does.
    atoll_wait="in 5 seconds" atoll_delay=5 atoll_panic="$(getarg panic=)"
    case "$atoll_panic" in
        '' | 0 | *[!0-9]*) ;;
        *) atoll_wait="(panic=$atoll_panic)" atoll_delay="$atoll_panic" ;;
    esac
    echo "atoll: the deployment cannot be booted; rebooting $atoll_wait" >/dev/console
    sleep "$atoll_delay"
    reboot -f || echo b > /proc/sysrq-trigger
fi
