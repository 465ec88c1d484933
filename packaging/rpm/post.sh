# corral %post (install: $1 = 1, upgrade: $1 = 2): see packaging/package-hooks. Starts nothing;
# moving running pools onto the new binary is %posttrans's job, after the old package is gone.
/usr/libexec/corral/package-hooks configure
