# corral %preun: runs for the old package during an upgrade too ($1 = 1): only an erase
# ($1 = 0) stops the pools that use the binary.
if [ "$1" -eq 0 ]; then
    /usr/libexec/corral/package-hooks stop
fi
