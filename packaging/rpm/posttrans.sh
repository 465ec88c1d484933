# corral %posttrans: runs last in the transaction, from the new package, after the old one's
# %preun/%postun: every running pool whose master still runs the replaced binary moves onto
# the new one (nothing to do on a fresh install).
/usr/libexec/corral/package-hooks refresh
