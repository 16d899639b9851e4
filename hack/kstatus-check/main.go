// kstatus-check prints the verdict of the real kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus/status)
// for Kubernetes objects, so our tests ask the library Flux is built on instead of re-implementing its rules.
//
// Input (stdin, or the files named as arguments): JSON as the API server returns it — one object, or a
// List (`kubectl get -o json`). Output: one JSON line per object:
//
//	{"kind":"MLModel","namespace":"ns","name":"m","generation":2,"status":"Failed","message":"…"}
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
	Generation int64  `json:"generation"`
	Status     string `json:"status"`
	Message    string `json:"message"`
}

func objects(data []byte) ([]*unstructured.Unstructured, error) {
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	if !u.IsList() {
		return []*unstructured.Unstructured{&u}, nil
	}
	list, err := u.ToList()
	if err != nil {
		return nil, err
	}
	out := make([]*unstructured.Unstructured, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, &list.Items[i])
	}
	return out, nil
}

func check(data []byte, enc *json.Encoder) error {
	objs, err := objects(data)
	if err != nil {
		return err
	}
	for _, u := range objs {
		res, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
		if err := enc.Encode(verdict{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(),
			Generation: u.GetGeneration(), Status: res.Status.String(), Message: res.Message}); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	enc := json.NewEncoder(os.Stdout)
	inputs := os.Args[1:]
	if len(inputs) == 0 {
		inputs = []string{"-"}
	}
	for _, name := range inputs {
		var data []byte
		var err error
		if name == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(name)
		}
		if err == nil {
			err = check(data, enc)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: %s: %v\n", name, err)
			os.Exit(1)
		}
	}
}
