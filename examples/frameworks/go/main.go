// Go net/http under corral, standard library only. Socket: fd 3 (`net.FileListener`). Ready:
// mode = "listen" (Go's netpoller registers the socket in epoll when Serve starts).
//
// The drain, on SIGTERM: stop accepting (close this process's listener: the socket stays open
// in the other workers), every response says `Connection: close` (so clients move to another
// worker after their answer), then after a grace second `Shutdown`, which closes the
// connections left idle and waits for requests in flight. `Shutdown` alone closes idle
// keep-alive connections at once, racing requests already sent on them (and so does
// `SetKeepAlivesEnabled(false)`: it closes idle connections too).
// SHUTDOWN=stock calls `Shutdown` at once, for comparison.
//
//	go build -o server ./examples/frameworks/go
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	ln, err := net.FileListener(os.NewFile(3, "listen"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "no listening socket at fd 3 (run me under corral or a .socket unit):", err)
		os.Exit(1)
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %d\n", os.Getpid())
	})
	var draining atomic.Bool
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		app.ServeHTTP(w, r)
	})}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		<-stop
		if os.Getenv("SHUTDOWN") != "stock" {
			draining.Store(true)
			ln.Close()
			time.Sleep(time.Second)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		close(done)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed && !draining.Load() {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	<-done
}
