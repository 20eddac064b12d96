/**
 * For specs: the e2e cluster started by global-setup.ts.
 *   const cluster = e2eCluster();   await cluster.kubectl(['get', 'ns']);
 * kubeconfigPath / kubectlPath / clusterBinDir / clusterPkiDir are also available with inject().
 */
import { inject } from 'vitest';
import { clusterClient, type ClusterClient } from '../cluster/client.ts';

export function e2eCluster(): ClusterClient {
  return clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
}
