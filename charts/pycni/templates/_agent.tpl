{{/*
The pycni-agent container: routes (host-gw) or the VXLAN overlay to the other Nodes' podCIDRs,
in the host's network namespace; settings from the ConfigMap key network.yaml.
*/}}
{{- define "pycni.agentContainer" -}}
- name: pycni-agent
  image: {{ include "pycni.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["pycni-agent"]
  env:
    - name: NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    - name: PYCNI_NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    - name: PYCNI_CONFIGMAP
      value: {{ include "pycni.configMapRef" . | quote }}
    - name: PYCNI_AGENT_CONFIG_KEY
      value: network.yaml
    - name: PYCNI_AGENT_LISTEN
      value: {{ printf "%s:%v" .Values.listenAddress .Values.agent.healthPort | quote }}
    - name: PYCNI_LOG_LEVEL
      value: {{ .Values.logLevel | quote }}
    {{- with include "pycni.apiServerEnv" . }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with include "pycni.extraEnv" . }}
    {{- . | nindent 4 }}
    {{- end }}
  ports:
    - name: agent-health
      containerPort: {{ .Values.agent.healthPort }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ .Values.agent.healthPort }}
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 6
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ .Values.agent.healthPort }}
    periodSeconds: 5
    timeoutSeconds: 3
  {{- with .Values.agent.resources }}
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
      # routes, the VXLAN device, FDB/neighbour entries, its nftables table
      add: [NET_ADMIN, NET_RAW]
    seccompProfile:
      type: RuntimeDefault
    {{- if .Values.seLinux.enabled }}
    seLinuxOptions:
      type: {{ .Values.seLinux.type }}
    {{- end }}
  volumeMounts:
    - name: agent-tmp
      mountPath: /tmp
{{- end -}}
