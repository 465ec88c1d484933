# corral %preun: runs for the old package during an upgrade too ($1 = 1): only an erase
# ($1 = 0) stops the pools that use the binary and names the pool units that stay enabled.
if [ "$1" -eq 0 ]; then
    /usr/libexec/corral/package-hooks stop
    /usr/libexec/corral/package-hooks leftovers
fi
