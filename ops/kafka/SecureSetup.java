// Setup and readiness check of the SASL_SSL broker started by `ops/stack up kafka-secure`.
//
// Run with the broker's own jars (java -cp "$KAFKA_LIBS_CACHE/*" ops/kafka/SecureSetup.java ...;
// Java's single-file source launcher compiles it in memory, no build step):
//
//   SecureSetup CLIENT_PROPERTIES TIMEOUT_S PRINCIPAL PREFIX
//
// Connects as the admin (super user) over SASL_SSL with CLIENT_PROPERTIES until the cluster
// answers (a real authenticated TLS client connection: the readiness check), then grants
// PRINCIPAL (e.g. User:leadflow) exactly what a leadflow worker needs, on PREFIXED resource
// patterns only (PREFIX = the namespace followed by a dot, e.g. "secure."):
//   topics  PREFIX*  READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS
//   groups  PREFIX*  READ, DESCRIBE
// Creating ACLs that exist already is a no-op, so running it again is harmless.
// Exit 0 when ready and the ACLs are in place; 1 with one line on stderr otherwise.

import java.io.FileInputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class SecureSetup {
  public static void main(String[] args) throws Exception {
    if (args.length != 4) {
      System.err.println("usage: SecureSetup CLIENT_PROPERTIES TIMEOUT_S PRINCIPAL PREFIX");
      System.exit(2);
    }
    Properties props = new Properties();
    try (FileInputStream in = new FileInputStream(args[0])) {
      props.load(in);
    }
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
    String principal = args[2];
    String prefix = args[3];
    props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
    props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "8000");
    String last = "no attempt";
    try (Admin admin = Admin.create(props)) {
      while (true) {
        try {
          String cluster = admin.describeCluster().clusterId().get(8, TimeUnit.SECONDS);
          int nodes = admin.describeCluster().nodes().get(8, TimeUnit.SECONDS).size();
          List<AclBinding> acls = new ArrayList<>();
          for (AclOperation op :
              new AclOperation[] {
                AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE,
                AclOperation.DESCRIBE_CONFIGS
              }) {
            acls.add(binding(ResourceType.TOPIC, prefix, principal, op));
          }
          for (AclOperation op : new AclOperation[] {AclOperation.READ, AclOperation.DESCRIBE}) {
            acls.add(binding(ResourceType.GROUP, prefix, principal, op));
          }
          admin.createAcls(acls).all().get(8, TimeUnit.SECONDS);
          int total = admin.describeAcls(AclBindingFilter.ANY).values().get(8, TimeUnit.SECONDS).size();
          System.out.println(
              "verdict: SASL_SSL admin connection ok (cluster " + cluster + ", " + nodes + " node); "
                  + total + " ACLs; " + principal + " may use topics and groups '" + prefix + "*'");
          return;
        } catch (Exception e) {
          Throwable cause = e.getCause() != null ? e.getCause() : e;
          last = cause.getClass().getSimpleName() + ": " + cause.getMessage();
          if (System.nanoTime() > deadline) {
            System.out.println("verdict: no SASL_SSL admin connection within " + args[1] + " s: " + last);
            System.exit(1);
          }
          Thread.sleep(1000);
        }
      }
    }
  }

  static AclBinding binding(ResourceType type, String prefix, String principal, AclOperation op) {
    return new AclBinding(
        new ResourcePattern(type, prefix, PatternType.PREFIXED),
        new AccessControlEntry(principal, "*", op, AclPermissionType.ALLOW));
  }
}
