# The tiny app for Puma under corral (docs/frameworks.md):
#   puma --bind-to-activated-sockets only config.ru
# Puma reads LISTEN_FDS itself; without `only` it would also bind its default port (9292) in
# every worker. On SIGTERM it stops accepting, finishes what is in flight, and re-raises
# SIGTERM (corral logs "stopped (signal SIGTERM) … after its stop signal").
run ->(_env) { [200, { "Content-Type" => "text/plain" }, ["hello from #{Process.pid}\n"]] }
