# corral %postun: systemd forgets the removed templates; an erase ($1 = 0) also removes the
# links that enabled template instances (they point nowhere now). Users' pool configs stay.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
if [ "$1" -eq 0 ] && [ -d /etc/systemd/system ]; then
    find /etc/systemd/system -type l -path '*.wants/corral@*' ! -exec test -e {} \; -delete || :
    rmdir /etc/corral 2>/dev/null || :
fi
