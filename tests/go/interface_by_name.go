// Looks an interface up by name as Go programs do (net.InterfaceByName: netlink, no libc)
// and prints what it finds: "NAME mtu=MTU up=BOOL" and then one address per line.
// Built static (CGO_ENABLED=0) by the tests.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: interface_by_name NAME")
		os.Exit(2)
	}
	iface, err := net.InterfaceByName(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%s mtu=%d up=%v\n", iface.Name, iface.MTU, iface.Flags&net.FlagUp != 0)
	addrs, err := iface.Addrs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, addr := range addrs {
		fmt.Println(addr.String())
	}
}
