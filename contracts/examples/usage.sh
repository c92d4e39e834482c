# From the ARES V1 document: "Check Usage (curl)", verbatim.
curl https://api.ares.dirmacs.com/v1/usage \
-H "Authorization: Bearer ares_x7k9m2p4q8r1s5t3"
