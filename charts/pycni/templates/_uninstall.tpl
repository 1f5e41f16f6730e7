{{/*
The cluster uninstall mode (uninstall: true): one container per node runs
`pycni-agent cleanup` (agent/cleanup.py) and then `pycni-installer uninstall --node` (what it
removes: installer/cleanup.py, README "Uninstall"),
then idles, Ready once the node is clean. It retries (exits non-zero, restarted) until it is.
*/}}
{{- define "pycni.uninstallContainer" -}}
- name: uninstall
  image: {{ include "pycni.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["sh", "-c", "pycni-agent cleanup && exec pycni-installer uninstall --node --idle"]
  env:
    - name: PYCNI_BIN_DIR
      value: /host/opt/cni/bin
    - name: PYCNI_CONF_DIR
      value: /host/etc/cni/net.d
    - name: PYCNI_CONF_NAME
      value: {{ .Values.confName | quote }}
    - name: PYCNI_LOG_LEVEL
      value: {{ .Values.logLevel | quote }}
    {{- with include "pycni.extraEnv" . }}
    {{- . | nindent 4 }}
    {{- end }}
  readinessProbe:
    exec:
      command: ["cat", "/tmp/pycni-uninstalled"]
    periodSeconds: 5
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsUser: 0
    runAsGroup: 0
    runAsNonRoot: false
    privileged: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
      # the agent's nft table, routes and VXLAN device; the bridge; (uid 0 signals the DNS servers)
      add: [NET_ADMIN]
    seccompProfile:
      type: RuntimeDefault
    {{- if .Values.seLinux.enabled }}
    seLinuxOptions:
      type: {{ .Values.seLinux.type }}
    {{- end }}
  volumeMounts:
    - name: cni-bin
      mountPath: /host/opt/cni/bin
    - name: cni-conf
      mountPath: /host/etc/cni/net.d
    - name: tmp
      mountPath: /tmp
    # host-local's stores and pycni-dns's state, at their host paths (the conflist names them)
    - name: cni-state
      mountPath: /var/lib/cni
    - name: pycni-run
      mountPath: /run/pycni
{{- end -}}

{{- define "pycni.uninstallVolumes" -}}
- name: cni-state
  hostPath:
    path: /var/lib/cni
    type: DirectoryOrCreate
- name: pycni-run
  hostPath:
    path: /run/pycni
    type: DirectoryOrCreate
{{- end -}}
