// argocd-health-check runs Argo CD resource health checks (health.lua) in gopher-lua, the Lua runtime Argo CD
// itself embeds, the way Argo CD runs them, so our tests ask that runtime instead of reading the script ourselves.
//
//	argocd-health-check test DIR
//	    For every health.lua under DIR (Argo CD's resource_customizations/<group>/<Kind>/ layout), run each
//	    case of the health_test.yaml beside it and compare status and message, as Argo CD's own
//	    util/lua health test does. Prints one line per case; exits 1 if any case fails.
//	argocd-health-check eval SCRIPT FILE...
//	    Print {"file","status","message"} as JSON lines for each object (YAML or JSON) in FILE.
//
// Each case runs twice: with the Lua standard libraries (Argo CD's built-in checks) and without them (a check
// set in argocd-cm, where Argo CD opens only the package, base, table and a reduced os library), so the script
// works when pasted into argocd-cm as well as when bundled.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// healthStatus is the shape Argo CD reads from the table a health.lua returns.
type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

var validStatus = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

type testFile struct {
	Tests []struct {
		InputPath    string       `json:"inputPath"`
		HealthStatus healthStatus `json:"healthStatus"`
	} `json:"tests"`
}

// toLua converts decoded JSON (maps, slices, float64, string, bool, nil) into Lua values.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetH(lua.LString(key), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// run executes script with the global `obj` set, under Argo CD's one-second limit.
func run(script string, obj map[string]any, openLibs bool) (healthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	if !openLibs {
		// What Argo CD opens for scripts from argocd-cm (its reduced os library offers only time functions,
		// which a health check of ours does not use).
		for _, lib := range []struct {
			name string
			open lua.LGFunction
		}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
			if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
				lua.LString(lib.name)); err != nil {
				return healthStatus{}, err
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return healthStatus{}, err
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return healthStatus{}, fmt.Errorf("expect table output from Lua script, not %s", l.Get(-1).Type())
	}
	out := healthStatus{}
	if s, ok := table.RawGetString("status").(lua.LString); ok {
		out.Status = string(s)
	}
	if m, ok := table.RawGetString("message").(lua.LString); ok {
		out.Message = string(m)
	}
	if !validStatus[out.Status] {
		return healthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return out, nil
}

func readObject(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return obj, nil
}

func testDir(root string) (int, error) {
	var scripts []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "health.lua" {
			scripts = append(scripts, path)
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	if len(scripts) == 0 {
		return 0, fmt.Errorf("no health.lua under %s", root)
	}
	sort.Strings(scripts)
	failures := 0
	for _, scriptPath := range scripts {
		dir := filepath.Dir(scriptPath)
		script, err := os.ReadFile(scriptPath)
		if err != nil {
			return 0, err
		}
		raw, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
		if err != nil {
			return 0, err
		}
		var tests testFile
		if err := yaml.Unmarshal(raw, &tests); err != nil {
			return 0, fmt.Errorf("%s/health_test.yaml: %w", dir, err)
		}
		if len(tests.Tests) == 0 {
			return 0, fmt.Errorf("%s/health_test.yaml has no tests", dir)
		}
		prefix, _ := filepath.Rel(root, dir)
		for _, tc := range tests.Tests {
			obj, err := readObject(filepath.Join(dir, tc.InputPath))
			if err != nil {
				return 0, err
			}
			for _, openLibs := range []bool{true, false} {
				mode := "argocd-cm"
				if openLibs {
					mode = "built-in"
				}
				got, err := run(string(script), obj, openLibs)
				verdict := "PASS"
				detail := fmt.Sprintf("%s: %s", got.Status, got.Message)
				if err != nil {
					verdict, detail = "FAIL", "error: "+err.Error()
				} else if got != tc.HealthStatus {
					verdict = "FAIL"
					detail += fmt.Sprintf(" (want %s: %s)", tc.HealthStatus.Status, tc.HealthStatus.Message)
				}
				if verdict == "FAIL" {
					failures++
				}
				fmt.Printf("%s  %-9s %s/%s  %s\n", verdict, mode, prefix, tc.InputPath, detail)
			}
		}
	}
	return failures, nil
}

func main() {
	if len(os.Args) >= 3 && os.Args[1] == "test" {
		failures, err := testDir(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "argocd-health-check:", err)
			os.Exit(2)
		}
		if failures > 0 {
			fmt.Printf("%d case(s) failed\n", failures)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) >= 4 && os.Args[1] == "eval" {
		script, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "argocd-health-check:", err)
			os.Exit(2)
		}
		enc := json.NewEncoder(os.Stdout)
		for _, path := range os.Args[3:] {
			obj, err := readObject(path)
			if err == nil {
				var got healthStatus
				got, err = run(string(script), obj, false)
				if err == nil {
					err = enc.Encode(map[string]string{"file": path, "status": got.Status, "message": got.Message})
				}
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "argocd-health-check:", path+":", err)
				os.Exit(2)
			}
		}
		return
	}
	fmt.Fprintln(os.Stderr, "usage: argocd-health-check test DIR | eval SCRIPT FILE...")
	os.Exit(2)
}
