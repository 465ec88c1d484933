# Puma's drain under corral (docs/frameworks.md): `puma -C puma.rb` with the sockets from
# LISTEN_FDS only.
#
# Stock Puma loses a request at each stop: a connection it has accepted but whose request has
# not arrived yet waits in its reactor, and the reactor's shutdown closes such connections
# unanswered. Without the reactor (`queue_requests false`) a thread reads each connection it
# accepts, so every accepted request is answered; `drain_on_shutdown` also answers connections
# still in the socket's queue when the stop signal comes.
bind_to_activated_sockets "only"
threads 4, 4
environment "production"
queue_requests false
drain_on_shutdown
