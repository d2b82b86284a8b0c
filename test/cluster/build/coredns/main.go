// Command coredns is CoreDNS (coremain.Run, as github.com/coredns/coredns's
// own main) with only the plugins a Kubernetes cluster DNS uses: those of the
// Corefile kubeadm writes (errors, health, ready, kubernetes, prometheus,
// forward, cache, loop, reload, loadbalance) plus a few for debugging
// (log, debug, hosts, rewrite, template, whoami, bind). Upstream's main links
// all ~60 plugins, among them the AWS, Azure, GCP and etcd back ends, whose
// SDKs dominate its build time. Add a plugin by adding its import; the
// plugin order (dnsserver.Directives) stays upstream's.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/debug"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics" // the "prometheus" directive
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/rewrite"
	_ "github.com/coredns/coredns/plugin/template"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func main() {
	coremain.Run()
}
