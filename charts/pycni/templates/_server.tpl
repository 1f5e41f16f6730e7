{{/*
The pycni-server container: the node server the zipapps hand CNI requests to over
/run/pycni/server.sock. Every path a request names is a host path, so each host directory
is mounted at the same path inside (volumes: "pycni.serverVolumes"); the one exception, when
unprivileged, is the host's /proc/sys/net at /host/proc/sys/net (PYCNI_PROC_SYS).
*/}}
{{- define "pycni.serverContainer" -}}
- name: pycni-server
  image: {{ include "pycni.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["pycni-server"]
  env:
    - name: PYCNI_SERVER_SOCKET
      value: /run/pycni/server.sock
    - name: PYCNI_SERVER_MAX_WORKERS
      value: {{ .Values.server.maxWorkers | quote }}
    - name: PYCNI_SERVER_IDLE_WORKERS
      value: {{ .Values.server.idleWorkers | quote }}
    - name: PYCNI_SERVER_REQUESTS_PER_WORKER
      value: {{ .Values.server.requestsPerWorker | quote }}
    - name: PYCNI_SERVER_RUN_TIMEOUT
      value: {{ .Values.server.runTimeoutSeconds | quote }}
    {{- if not .Values.server.privileged }}
    # The sysctls the bridge and macvlan write go through the writable mount below.
    - name: PYCNI_PROC_SYS
      value: /host/proc/sys
    {{- end }}
    {{- with include "pycni.extraEnv" . }}
    {{- . | nindent 4 }}
    {{- end }}
  # The probe asks the server itself over its socket (a request like any other).
  livenessProbe:
    exec:
      command: ["pycni-server", "health"]
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 6
  readinessProbe:
    exec:
      command: ["pycni-server", "health"]
    periodSeconds: 10
    timeoutSeconds: 5
  {{- with .Values.server.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsUser: 0
    runAsGroup: 0
    runAsNonRoot: false
    readOnlyRootFilesystem: true
    {{- if .Values.server.privileged }}
    privileged: true
    {{- else }}
    privileged: false
    allowPrivilegeEscalation: false
    capabilities:
      drop: [ALL]
      add:
        # links, addresses, routes, nftables (the sysctl writes need only uid 0)
        - NET_ADMIN
        # setns() into the pods' network namespaces
        - SYS_ADMIN
        # pycni-dns's per-network DNS servers listen on port 53
        - NET_BIND_SERVICE
        # the zipapps' sh handoff: the server reads a plugin's environment and stdin and writes
        # its stdout through /proc/<pid> (the plugin, run by the runtime, has more capabilities)
        - SYS_PTRACE
    seccompProfile:
      type: RuntimeDefault
    {{- if .Values.seLinux.enabled }}
    seLinuxOptions:
      type: {{ .Values.seLinux.type }}
    {{- end }}
    {{- end }}
  volumeMounts:
    # The socket dir (0700, created by the server) and pycni-dns's state (/run/pycni/dns).
    - name: pycni-run
      mountPath: /run/pycni
    # The runtimes' netns bind mounts appear after the container started: HostToContainer,
    # which needs the host's /run/netns on a shared or slave mount (see server.netnsPropagation).
    # /var/run is a symlink to /run (on the host and in the image): /var/run/netns paths resolve here.
    - name: netns
      mountPath: /run/netns
      readOnly: true
      {{- if ne .Values.server.netnsPropagation "None" }}
      mountPropagation: {{ .Values.server.netnsPropagation }}
      {{- end }}
    # pycni-host-local's default dataDir /var/lib/cni/networks.
    - name: cni-state
      mountPath: /var/lib/cni
    # IPAM delegates are exec'd from CNI_PATH; pycni zipapps there of this build run in-process.
    - name: cni-bin
      mountPath: {{ .Values.hostPaths.cniBinDir }}
      readOnly: true
    {{- if not .Values.server.privileged }}
    # The runtime mounts /proc/sys read-only; the host's /proc/sys/net is writable here. Its
    # entries follow the writer's current netns (the host's, or a pod's after setns).
    - name: proc-sys-net
      mountPath: /host/proc/sys/net
    {{- end }}
{{- end -}}

{{- define "pycni.serverVolumes" -}}
- name: pycni-run
  hostPath:
    path: /run/pycni
    type: DirectoryOrCreate
- name: netns
  hostPath:
    path: /run/netns
    type: DirectoryOrCreate
- name: cni-state
  hostPath:
    path: /var/lib/cni
    type: DirectoryOrCreate
{{- if not .Values.server.privileged }}
- name: proc-sys-net
  hostPath:
    path: /proc/sys/net
    type: Directory
{{- end }}
{{- end -}}
